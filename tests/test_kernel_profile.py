"""Kernel profiles from torch.profiler Chrome traces: categories, idle arithmetic, steps (synthetic traces in
the format torch.profiler exports: cpu_op/user_annotation ranges, cuda_runtime launches with correlation ids,
kernels on GPU streams)."""

import gzip
import json

import pytest

from dsv3_recipes.report import kernel_profile as kp

MAIN, BACKWARD_THREAD, PID = 100, 200, 1


class TraceBuilder:
    def __init__(self):
        self.events = []
        self.correlation = 0

    def range(self, name, ts, dur, tid=MAIN, cat="cpu_op", seq=None, dims=None):
        args = {"External id": len(self.events)}
        if seq is not None:
            args.update({"Sequence number": seq, "Fwd thread id": 0})
        if dims is not None:
            args["Input Dims"] = dims
        self.events.append(
            {"ph": "X", "cat": cat, "name": name, "pid": PID, "tid": tid, "ts": ts, "dur": dur, "args": args}
        )

    def step(self, n, ts, dur):
        self.range(f"ProfilerStep#{n}", ts, dur, cat="user_annotation")

    def kernel(self, name, launch_ts, ts, dur, tid=MAIN, stream=7, cat="kernel", launch="cudaLaunchKernel"):
        self.correlation += 1
        self.events.append(
            {
                "ph": "X",
                "cat": "cuda_runtime" if launch.startswith("cuda") else "cuda_driver",
                "name": launch,
                "pid": PID,
                "tid": tid,
                "ts": launch_ts,
                "dur": 1.0,
                "args": {"correlation": self.correlation},
            }
        )
        self.events.append(
            {
                "ph": "X",
                "cat": cat,
                "name": name,
                "pid": 0,
                "tid": stream,
                "ts": ts,
                "dur": dur,
                "args": {"correlation": self.correlation, "stream": stream, "device": 0},
            }
        )

    def write(self, path):
        data = {"schemaVersion": 1, "traceEvents": self.events}
        if str(path).endswith(".gz"):
            with gzip.open(path, "wt") as f:
                json.dump(data, f)
        else:
            path.write_text(json.dumps(data))
        return path


GEMM = "nvjet_tst_128x256_64x4_2x1_v_bz_coopA_TNT"


def every_category(b: TraceBuilder) -> dict[str, str]:
    """One step whose kernels reach every category, each by the path a real trace takes; returns the
    expected category of each kernel (names are unique)."""
    b.step(19, 0, 10_000)
    expected = {}

    def k(name, category, launch_ts, **kw):
        b.kernel(name, launch_ts, 20_000 + launch_ts, 10, **kw)  # runs later: the host is ahead
        expected[name] = category

    # Forward, on the main thread, inside the dsv3::<part> ranges of train/profile_ranges.py.
    b.range("dsv3::embedding", 100, 50)
    k("indexSelectLargeIndex<c10::BFloat16, long, unsigned int, 2, 2, -2, true>", kp.EMBEDDING, 120)
    b.range("dsv3::attention", 200, 300)
    k("transformer_engine::normalization::rmsnorm_fwd_tuned_kernel<...>", kp.ELEMENTWISE, 210)
    k(GEMM + "_qkv", kp.DENSE_GEMM, 220)
    b.range("FusedAttnFunc", 300, 100, seq=7)
    k(
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x128x128_4x1x1",
        kp.ATTENTION_FWD,
        310,
    )
    k("transformer_engine::fused_rope_forward_kernel<bf16>", kp.ELEMENTWISE, 420)
    b.range("dsv3::moe", 600, 1000)
    b.range("dsv3::router", 610, 100)
    k(GEMM + "_router", kp.ROUTER, 620)
    k("transformer_engine::fused_topk_with_score_function_forward_kernel", kp.ROUTER, 630)
    k("_row_id_map_pass_1_kernel", kp.ROUTER, 720)
    b.range("aten::mul", 730, 5, seq=11)  # the dispatcher's, inside dsv3::moe
    k("vectorized_elementwise_kernel<4, at::native::mul_functor>_dispatch", kp.ROUTER, 731)
    b.range("dsv3::experts", 750, 200)
    b.range("_GroupedLinear", 760, 100, seq=12)
    k(GEMM + "_experts", kp.EXPERT_GEMM, 770)
    k("transformer_engine::swiglu_kernel", kp.ELEMENTWISE, 870)
    b.range("dsv3::shared_expert", 1000, 100)
    k(GEMM + "_shared", kp.DENSE_GEMM, 1010)
    k("cast_transpose_fusion_kernel_optimized", kp.FP8, 1020)
    b.range("dsv3::output_layer", 2000, 100)
    b.range("LinearWithGradAccumulationAndAsyncCommunication", 2010, 50, seq=20)
    k(GEMM + "_output", kp.OUTPUT, 2020)
    b.range("dsv3::model", 1900, 500)
    k("cross_entropy_kernel", kp.OUTPUT, 2200)
    k("ncclDevKernel_AllReduce_Sum_f32_RING_LL", kp.COMMUNICATION, 2300)
    k("Memcpy DtoH (Device -> Pinned)", kp.COPIES, 2310, cat="gpu_memcpy", launch="cudaMemcpyAsync")
    k("some_kernel_nobody_knows", kp.OTHER, 2450)  # after dsv3::model, in no range
    k(GEMM + "_plain", kp.DENSE_GEMM, 2460)  # a GEMM with no range around it
    # Backward, on the autograd thread: the node's sequence number leads to its forward op's ranges.
    t = BACKWARD_THREAD
    b.range(
        f"{kp.BACKWARD_RANGE}: LinearWithGradAccumulationAndAsyncCommunicationBackward",
        3000,
        100,
        tid=t,
        seq=20,
    )
    k(GEMM + "_output_dgrad", kp.OUTPUT, 3010, tid=t)
    b.range(f"{kp.BACKWARD_RANGE}: _GroupedLinearBackward", 3200, 100, tid=t, seq=12)
    b.range("_GroupedLinearBackward", 3201, 98, tid=t, seq=12)
    k(GEMM + "_experts_dgrad", kp.EXPERT_GEMM, 3210, tid=t)
    b.range(f"{kp.BACKWARD_RANGE}: MulBackward0", 3400, 50, tid=t, seq=11)
    k("vectorized_elementwise_kernel<4, at::native::mul_functor>_dispatch_bwd", kp.ROUTER, 3410, tid=t)
    b.range(f"{kp.BACKWARD_RANGE}: FusedAttnFuncBackward", 3500, 100, tid=t, seq=7)
    k("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_7", kp.ATTENTION_BWD, 3510, tid=t)
    k(GEMM + "_attn_dgrad_in_backward_range", kp.DENSE_GEMM, 3520, tid=t)
    # The optimizer: its torch.optim range, and its multi-tensor kernels anywhere.
    b.range("Optimizer.step#FusedAdam.step", 5000, 500)
    k("multi_tensor_apply_kernel<TensorListMetadata<4>, AdamFunctor<float>>", kp.OPTIMIZER, 5010)
    k("vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>_opt", kp.OPTIMIZER, 5020)
    k("multi_tensor_apply_kernel<TensorListMetadata<1>, L2NormFunctor<float>>", kp.OPTIMIZER, 6000)
    return expected


def categories_of(profile):
    step = profile["steps"][0]
    return {k["name"]: name for name, c in step["categories"].items() for k in c["top"]}


def test_every_category_is_reached_by_its_path(tmp_path):
    b = TraceBuilder()
    expected = every_category(b)
    profile = kp.profile(b.write(tmp_path / "t.json"), top=50)
    assert categories_of(profile) == {kp._short(name, 300): category for name, category in expected.items()}
    step = profile["steps"][0]
    assert step["kernels"] == len(expected) and step["unlinked_kernels"] == 0
    assert step["categories"][kp.OTHER]["top"][0]["name"] == "some_kernel_nobody_knows"


def test_torchtitan_gemms_by_shape_and_by_what_is_compiled(tmp_path):
    """TorchTitan: the GEMM whose matmul op has the expert count as a dimension is the router's (a compiled
    block's call range, holding the whole block's inputs, the router weight among them, says nothing about
    the GEMMs inside it), the grouped one an expert's, and the one outside every compiled graph, forward
    or backward, the output layer's."""
    b = TraceBuilder()
    b.step(19, 0, 5000)
    b.range("Torch-Compiled Region: 0/0", 5, 600)
    b.range("CompiledFunction", 8, 550, seq=3)
    b.range("## Call CompiledFxGraph fabc ##", 10, 500, dims=[[8, 4096, 2048], [64, 2048], [64]])
    b.range("aten::mm", 20, 10, dims=[[32768, 2048], [2048, 64]])
    b.kernel(GEMM + "_gate", 21, 2000, 5)
    b.range("aten::mm", 40, 10, dims=[[32768, 2048], [2048, 1024]])
    b.kernel(GEMM + "_shared", 41, 2010, 5)
    b.range("aten::_grouped_mm", 60, 10, dims=[[196608, 2048], [64, 2048, 1024], [64]])
    b.kernel("cutlass::device_kernel<...GemmUniversal<GroupProblemShape<...>>>", 61, 2020, 5)
    b.range("triton_poi_fused_scatter_add_7", 80, 5, cat="user_annotation")
    b.kernel("triton_poi_fused_scatter_add_7", 81, 2030, 5, launch="cuLaunchKernel")
    b.range("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_3", 90, 5, cat="user_annotation")
    b.kernel("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_3", 91, 2040, 5, launch="cuLaunchKernel")
    b.range("aten::linear", 700, 20, seq=9)
    b.range("aten::mm", 705, 10, dims=[[32768, 2048], [2048, 32768]])
    b.kernel(GEMM + "_vocab", 706, 2050, 5)
    b.kernel("triton_red_fused__log_softmax_nll_loss_forward_2", 800, 2060, 5, launch="cuLaunchKernel")
    b.range(f"{kp.BACKWARD_RANGE}: MmBackward0", 1000, 50, tid=BACKWARD_THREAD, seq=9)
    b.kernel(GEMM + "_vocab_dgrad", 1010, 2070, 5, tid=BACKWARD_THREAD)
    b.range(f"{kp.BACKWARD_RANGE}: CompiledFunctionBackward", 1100, 500, tid=BACKWARD_THREAD, seq=3)
    b.kernel(GEMM + "_block_dgrad", 1110, 2080, 5, tid=BACKWARD_THREAD)
    path = b.write(tmp_path / "tt.json")
    profile = kp.profile(path, classifier=kp.Classifier(experts=64, eager_gemms_are_output=True))
    assert categories_of(profile) == {
        GEMM + "_gate": kp.ROUTER,
        GEMM + "_shared": kp.DENSE_GEMM,
        "cutlass::device_kernel<...GemmUniversal<GroupProblemShape<...>>>": kp.EXPERT_GEMM,
        "triton_poi_fused_scatter_add_7": kp.ROUTER,
        "triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_3": kp.ELEMENTWISE,
        GEMM + "_vocab": kp.OUTPUT,
        "triton_red_fused__log_softmax_nll_loss_forward_2": kp.OUTPUT,
        GEMM + "_vocab_dgrad": kp.OUTPUT,
        GEMM + "_block_dgrad": kp.DENSE_GEMM,
    }
    # Without those two rules every one of these GEMMs but the grouped one is a dense one.
    plain = categories_of(kp.profile(path))
    assert plain[GEMM + "_gate"] == plain[GEMM + "_vocab"] == plain[GEMM + "_vocab_dgrad"] == kp.DENSE_GEMM


def test_busy_idle_and_gaps_by_hand(tmp_path):
    """Step host range 0-1000 µs; kernels A 100-300 and B 200-400 (two streams), C 500-600, D 900-950:
    busy 450 µs, span 850, idle between kernels 400 (gaps 100 and 300), outside 150, overlap 100."""
    b = TraceBuilder()
    b.step(5, 0, 1000)
    b.range("dsv3::attention", 850, 20)
    for name, start, end, stream in (
        ("A", 100, 300, 7),
        ("B", 200, 400, 8),
        ("C", 500, 600, 7),
        ("D", 900, 950, 7),
    ):
        b.kernel(f"kernel_{name}", 860 if name == "D" else 50, start, end - start, stream=stream)
    step = kp.profile(b.write(tmp_path / "t.json"))["steps"][0]
    assert step["wall_ms"] == pytest.approx(1.0)
    assert step["busy_ms"] == pytest.approx(0.45)
    assert step["gpu_span_ms"] == pytest.approx(0.85)
    assert step["idle_between_kernels_ms"] == pytest.approx(0.40)
    assert step["idle_outside_kernels_ms"] == pytest.approx(0.15)
    assert step["kernel_sum_ms"] == pytest.approx(0.55)
    assert step["stream_overlap_ms"] == pytest.approx(0.10)
    gaps = step["largest_gaps"]
    assert [round(g["ms"], 3) for g in gaps] == [0.3, 0.1]
    assert gaps[0]["after"] == "kernel_C" and gaps[0]["before"] == "kernel_D"
    assert gaps[0]["launched_in"] == ["ProfilerStep#5", "dsv3::attention"]
    # Each gap is the wait before the kernel after it, in that kernel's category: D's 300 µs, C's 100.
    waits = {name: c["idle_before_ms"] for name, c in step["categories"].items() if c["idle_before_ms"]}
    category = {k["name"]: name for name, c in step["categories"].items() for k in c["top"]}
    expected = {category["kernel_D"]: 0.3}
    expected[category["kernel_C"]] = expected.get(category["kernel_C"], 0.0) + 0.1
    assert waits == pytest.approx(expected)
    assert sum(waits.values()) == pytest.approx(step["idle_between_kernels_ms"])
    by_range = {r["range"]: r["ms"] for r in step["idle_by_launching_range"]}
    assert by_range == pytest.approx({"dsv3::attention": 0.3, "ProfilerStep#5": 0.1})


def test_host_syncs_are_counted_by_the_ranges_that_made_them(tmp_path):
    """Two syncs under the MoE's masked_select, one under a step-level item(), an async copy (not a sync)
    and a sync after the step (not the step's): 3 syncs, 2 of them the MoE's."""
    b = TraceBuilder()
    b.step(3, 0, 1000)
    b.range("dsv3::moe", 100, 400)
    b.range("aten::masked_select", 150, 100)
    b.range("aten::masked_select", 300, 100)
    b.range("aten::item", 600, 100)
    b.kernel("k", 10, 20, 900)
    for name, ts in (
        ("cudaStreamSynchronize", 200),
        ("cudaStreamSynchronize", 350),
        ("cudaStreamSynchronize", 650),
        ("cudaMemcpyAsync", 660),
        ("cudaDeviceSynchronize", 1500),
    ):
        b.events.append(
            {
                "ph": "X",
                "cat": "cuda_runtime",
                "name": name,
                "pid": PID,
                "tid": MAIN,
                "ts": ts,
                "dur": 5.0,
                "args": {},
            }
        )
    syncs = kp.profile(b.write(tmp_path / "t.json"))["steps"][0]["host_syncs"]
    assert syncs["count"] == 3
    assert syncs["by_range"] == [
        {"range": "dsv3::moe > aten::masked_select", "count": 2},
        {"range": "ProfilerStep#3 > aten::item", "count": 1},
    ]


def test_steps_are_the_profiler_step_ranges_and_kernels_go_by_their_launch(tmp_path):
    b = TraceBuilder()
    b.step(16, 0, 1000)
    b.step(17, 1000, 1000)
    b.kernel("k16_runs_during_step_17", 900, 1500, 100)  # launched in 16, still running in 17
    b.kernel("k17", 1100, 1700, 100)
    b.kernel("k17b", 1200, 1800, 100)
    b.kernel("outside_any_step", 5000, 5000, 10)
    path = b.write(tmp_path / "t.json.gz")
    profile = kp.profile(path, step_offset=1)
    assert profile["trace"] == "t.json.gz"  # the machine's directory stays out of committed summaries
    assert [(s["profiler_step"], s["train_step"], s["kernels"]) for s in profile["steps"]] == [
        (16, 17, 1),
        (17, 18, 2),
    ]
    assert [s["profiler_step"] for s in kp.profile(path, steps=[17])["steps"]] == [17]
    with pytest.raises(ValueError, match="no ProfilerStep#3 .*16, 17"):
        kp.profile(path, steps=[3])


def test_a_trace_without_steps_is_one_window(tmp_path):
    b = TraceBuilder()
    b.kernel("a", 0, 100, 100)
    b.kernel("b", 10, 300, 100)
    (step,) = kp.profile(b.write(tmp_path / "t.json"))["steps"]
    assert step["profiler_step"] is None and step["kernels"] == 2
    assert step["wall_ms"] == pytest.approx(0.3) and step["idle_between_kernels_ms"] == pytest.approx(0.1)


def test_unreadable_traces_fail_naming_the_file(tmp_path):
    truncated = tmp_path / "cut.json"
    truncated.write_text('{"traceEvents": [{"ph": "X"')
    with pytest.raises(ValueError, match="cut.json: not a readable Chrome trace"):
        kp.profile(truncated)
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="no traceEvents"):
        kp.profile(tmp_path / "other.json")


def test_cli_writes_summaries_and_the_side_by_side_table(tmp_path, capsys):
    a, b = TraceBuilder(), TraceBuilder()
    every_category(a)
    b.step(20, 0, 2000)
    b.range("aten::_grouped_mm", 10, 10)
    b.kernel("cutlass_grouped_gemm", 11, 100, 900)
    b.kernel("flash_fwd_kernel", 30, 1300, 500)
    a_json, b_json = tmp_path / "a.json", tmp_path / "b.json"
    assert kp.main([str(a.write(tmp_path / "ta.json")), "--json", str(a_json)]) == 0
    assert kp.main([str(b.write(tmp_path / "tb.json")), "--json", str(b_json), "--step-offset", "0"]) == 0
    md = tmp_path / "side.md"
    assert (
        kp.main([str(b_json), str(a_json), "--label", "TorchTitan", "--label", "proxy", "--md", str(md)]) == 0
    )
    table = md.read_text()
    assert table.splitlines()[0] == "| category | TorchTitan ms | proxy ms | proxy − TorchTitan |"
    assert "| expert GEMMs | 0.9 | 0.0 | -0.9 |" in table  # the proxy's synthetic expert GEMMs are 10 µs each
    assert "| attention forward | 0.5 | 0.0 | -0.5 |" in table
    assert "Profiled steps: TorchTitan: step 20, proxy: step 19." in table
    assert "`cutlass_grouped_gemm`" in table
    assert "- TorchTitan: 0.30 ms before `flash_fwd_kernel` (ProfilerStep#20); host syncs: 0" in table
    with pytest.raises(SystemExit):  # one label for two inputs
        kp.main([str(a_json), str(b_json), "--label", "only one"])
    assert "--label: 1 given for 2 inputs" in capsys.readouterr().err


def test_cli_says_why_it_failed(tmp_path, capsys):
    assert kp.main([str(tmp_path / "missing.json.gz")]) == 1
    assert "kernel_profile: error:" in capsys.readouterr().err
