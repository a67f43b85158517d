"""The step-time model (plan.step_time) against published DSV3-671B runs and its own arithmetic.

benchmarks/results/step_time_fit/2026-12-06-h200-clamped.json is the fit (benchmarks/fit_step_time.py): its
constants are the planner's, its predictions are what the planner says today for every published row
and every 1-GPU check, and README's table quotes it. Fitted rows must be within 10%, held-out rows within
15%; a row that is not is a strict xfail whose reason is its ``fitted_miss`` / ``held_out_miss`` field
(benchmarks/held_out_analysis.md), so a change that brings it within its bound is noticed.
"""

import dataclasses
import json
from pathlib import Path

import pytest
from conftest import load_script

from dsv3_recipes.cli import main
from dsv3_recipes.launch.submit import build_task, recipe_of
from dsv3_recipes.plan import calibration, memory, step_time
from dsv3_recipes.plan.preflight import plan
from dsv3_recipes.recipe import hardware
from dsv3_recipes.recipe.resolve import resolve
from dsv3_recipes.recipe.schema import RecipeError
from dsv3_recipes.recipes import proxy

ROOT = Path(__file__).parent.parent
FIT = json.loads(
    (ROOT / "benchmarks" / "results" / "step_time_fit" / "2026-12-06-h200-clamped.json").read_text()
)
PUBLISHED = json.loads((ROOT / "benchmarks" / "published_runs.json").read_text())
ROWS = PUBLISHED["rows"]


def resolved(name, *overrides, shrink=None):
    return resolve(recipe_of(build_task(name, list(overrides), shrink_gpus=shrink)))


def test_the_planner_uses_the_fitted_constants():
    assert dataclasses.asdict(step_time.FITTED) == FIT["constants"]
    for name, (low, high) in FIT["bounds"].items():
        assert low <= FIT["constants"][name] <= high


@pytest.mark.parametrize("row", ROWS, ids=[r["id"] for r in ROWS])
def test_each_published_row_is_predicted_as_the_fit_says(row):
    t = step_time.step_time(resolved(row["recipe"], *row["overrides"]))
    fitted = next(f for f in FIT["rows"] if f["id"] == row["id"])
    assert t.step_time_s == pytest.approx(fitted["predicted_step_time_s"], rel=2e-3)
    assert fitted["published_step_time_s"] == row["published"]["step_time_s"]


def _bounded(role: str) -> list:
    """The rows of ``role``, each a strict xfail with its recorded reason where it misses its bound."""
    miss = f"{role}_miss"
    return [
        pytest.param(
            r, id=r["id"], marks=[pytest.mark.xfail(strict=True, reason=r[miss])] if miss in r else []
        )
        for r in ROWS
        if r["role"] == role
    ]


@pytest.mark.parametrize("row", _bounded("fitted"))
def test_each_fitted_row_is_within_10_percent(row):
    t = step_time.step_time(resolved(row["recipe"], *row["overrides"]))
    assert t.step_time_s == pytest.approx(row["published"]["step_time_s"], rel=0.10)


@pytest.mark.parametrize("row", _bounded("held_out"))
def test_each_held_out_row_is_within_15_percent(row):
    t = step_time.step_time(resolved(row["recipe"], *row["overrides"]))
    assert t.step_time_s == pytest.approx(row["published"]["step_time_s"], rel=0.15)


def test_a_miss_is_recorded_on_its_own_role_and_each_correction_is_in_the_overrides():
    for row in ROWS:
        assert not {"fitted_miss", "held_out_miss"} - {f"{row['role']}_miss"} & set(row), row["id"]
        fix = row.get("correction")
        if fix:
            assert fix["wrong"] and fix["source"] and fix["quote"], row["id"]
            for key, change in fix["changed"].items():
                assert f"{key}={change['now']}" in row["overrides"], (row["id"], key)


def test_every_row_carries_the_run_conditions_all_published_runs_share():
    """Gradient-accumulation fusion was on in every published run (apex in every source's container), so
    a row planned without it would pay the DDP hooks' accumulation its run did not."""
    shared = PUBLISHED["every_row"]["overrides"]
    assert "model.gradient_accumulation_fusion=True" in shared
    for row in ROWS:
        assert set(shared) <= set(row["overrides"]), row["id"]


def test_three_rows_are_fitted_and_the_rest_held_out():
    roles = [r["role"] for r in ROWS]
    assert roles.count("fitted") == 3 and set(roles) == {"fitted", "held_out"}


@pytest.mark.parametrize("check", FIT["one_gpu_checks"], ids=[c["label"] for c in FIT["one_gpu_checks"]])
def test_each_one_gpu_check_is_its_committed_run(check):
    result = json.loads((ROOT / check["result"]).read_text())
    assert result["step_time_s_median"] == pytest.approx(check["measured_step_time_s"], abs=1e-4)
    assert result["num_gpus"] == 1 and result["gpu"] == "NVIDIA H200"


def test_parts_sum_to_the_step_and_json_carries_them(capsys):
    assert main(["plan", "h100_fp8_blockwise", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    parts = data["step_time_parts"]
    assert set(parts) == {
        "compute",
        "ep_dispatch_combine",
        "tp_collectives",
        "pp_p2p",
        "pp_bubble",
        "dp_grad_param_sync",
        "ddp_wrapper",
        "optimizer",
        "host",
    }
    assert sum(parts.values()) == pytest.approx(data["step_time_s"])
    assert data["tokens_per_s_per_gpu"] == pytest.approx(8192 * 4096 / data["step_time_s"] / 1024)
    assert data["step_time_source"]["case"].startswith("measured stand-in")


def test_the_printout_shows_every_part(capsys):
    assert main(["plan", "bridge_default_1024gpu"]) == 0
    out = capsys.readouterr().out
    parts = (
        "compute",
        "ep_dispatch_combine",
        "pp_bubble",
        "dp_grad_param_sync",
        "ddp_wrapper",
        "optimizer",
        "host",
    )
    for part in parts:
        assert part in out


def test_the_bubble_is_pp_minus_one_over_vpp_micro_batches_of_the_slowest_rank():
    r = resolved("gb200_mxfp8_256gpu")  # PP8 VPP4, 64 micro-batches
    t = step_time.step_time(r)
    per_microbatch = t.rank_microbatch_s[t.slowest_pp_rank]
    assert t.parts["pp_bubble"] == pytest.approx(7 / 4 * per_microbatch)
    assert t.parts["compute"] + t.parts["ep_dispatch_combine"] == pytest.approx(64 * per_microbatch, rel=1e-6)


def test_a_larger_batch_adds_micro_batches_but_not_bubble():
    small = step_time.step_time(resolved("bridge_default_1024gpu"))
    large = step_time.step_time(resolved("bridge_default_1024gpu", "train.global_batch_size=8192"))
    assert large.parts["compute"] == pytest.approx(2 * small.parts["compute"])
    assert large.parts["pp_bubble"] == pytest.approx(small.parts["pp_bubble"])


def test_ep_overlap_hides_the_all_to_all_behind_the_layer():
    overlapped = step_time.step_time(resolved("h100_fp8_blockwise"))
    exposed = step_time.step_time(
        resolved(
            "h100_fp8_blockwise",
            "comm_overlap.overlap_moe_expert_parallel_comm=False",
            "comm_overlap.delay_wgrad_compute=False",
        )
    )
    assert overlapped.parts["ep_dispatch_combine"] < exposed.parts["ep_dispatch_combine"]
    assert exposed.parts["ep_dispatch_combine"] > 0


def test_all_to_all_beyond_the_nvlink_domain_costs_more():
    inside = step_time._ep_comm_s(resolved("gb200_mxfp8_256gpu"), step_time.FITTED)  # EP32 in an NVL72
    beyond = step_time._ep_comm_s(resolved("h100_fp8_blockwise"), step_time.FITTED)  # EP64 over 8 nodes
    assert beyond > inside > 0


def test_cuda_graphs_take_launches_off_the_host():
    constants = dataclasses.replace(step_time.FITTED, host_s_per_launch=5e-6)
    eager = step_time.step_time(resolved("proxy_1gpu", "launch.gpu_type=h200"), constants=constants)
    graphed = step_time.step_time(
        resolved(
            "proxy_1gpu",
            "launch.gpu_type=h200",
            "model.cuda_graph_impl=transformer_engine",
            'model.cuda_graph_scope=["attn","moe_router"]',
            "model.use_te_rng_tracker=True",
            "model.moe_token_dispatcher_type=alltoall",
        ),
        constants=constants,
    )
    assert 0 < graphed.parts["host"] < eager.parts["host"]


def test_memory_bound_work_is_slower_on_h100_than_on_h200():
    h200 = step_time.step_time(resolved("bridge_default_1024gpu", "launch.gpu_type=h200"))
    h100 = step_time.step_time(resolved("bridge_default_1024gpu"))
    assert h100.parts["compute"] > h200.parts["compute"]
    assert h100.parts["optimizer"] == pytest.approx(h200.parts["optimizer"] * 4.8 / 3.35)


def _with_case(r, **changes):
    """The committed calibration with the case of ``r``'s stand-in changed (``changes`` as
    ``dataclasses.replace`` takes them)."""
    cal = calibration.load()
    case, _ = cal.case_for(calibration.stand_in(r))
    return dataclasses.replace(cal, cases=cal.cases | {case.key: dataclasses.replace(case, **changes)})


def _with_host_wait(r, wait_share: float):
    """Every part of ``r``'s case measured as waiting ``wait_share`` of its forward+backward for the
    host (kernel_s the rest)."""
    case, _ = calibration.load().case_for(calibration.stand_in(r))

    def waiting(part):
        return dataclasses.replace(part, kernel_s=part.forward_backward_s * (1 - wait_share))

    return _with_case(r, **{n: waiting(getattr(case, n)) for n in (*calibration.PARTS, "mtp")})


def test_time_the_gpu_waited_for_the_host_does_not_scale_with_the_gpu():
    r200 = resolved("bridge_default_1024gpu", "launch.gpu_type=h200")
    r100 = resolved("bridge_default_1024gpu")  # H100: the same stand-in
    for share in (0.0, 0.5):
        cal = _with_host_wait(r200, share)
        h200, h100 = (step_time.step_time(r, cal).parts["compute"] for r in (r200, r100))
        unmeasured = step_time.step_time(r100, _with_host_wait(r200, 0.0)).parts["compute"]
        if share == 0.0:  # every pass in kernels: the whole pass scales, as for a case without kernel_s
            assert h100 == pytest.approx(unmeasured)
            assert step_time.step_time(r100).parts["compute"] == pytest.approx(unmeasured)
        else:  # half of it waited for the host: the H100 adds its rates' slowdown to the other half only
            assert h200 == pytest.approx(step_time.step_time(r200).parts["compute"])
            assert h100 - h200 == pytest.approx((unmeasured - h200) / 2)


def test_cuda_graphs_take_the_host_wait_of_the_launches_they_capture():
    """The stand-in runs eager: a full-iteration graph leaves none of its measured wait for the host, the
    attention + router scope some of it, eager all of it."""
    row = next(r for r in ROWS if r["id"] == "mbridge_2606_gb300_mxfp8_4096")  # full_iteration graphs
    full = resolved(row["recipe"], *row["overrides"])
    partial = resolved(row["recipe"], *row["overrides"], 'model.cuda_graph_scope=["attn","moe_router"]')
    eager = resolved(
        row["recipe"], *row["overrides"], "model.cuda_graph_impl=none", "model.cuda_graph_scope=None"
    )
    assert len({calibration.stand_in(r).key for r in (full, partial, eager)}) == 1

    def compute(r, share):
        return step_time.step_time(r, _with_host_wait(r, share)).parts["compute"]

    assert compute(full, 0.5) == pytest.approx(compute(full, 0.0) / 2)  # only the kernels are left
    waits = [compute(r, 0.5) - compute(r, 0.0) / 2 for r in (full, partial, eager)]
    assert waits[0] == pytest.approx(0.0, abs=1e-9) and 0 < waits[1] < waits[2]


def test_a_stand_in_fed_more_tokens_than_the_rank_scales_their_kernels_but_not_their_launches():
    """EP ranks with fewer local experts than copies per token: the stand-in runs twice the sequences
    (token_scale 0.5) with the rank's launches, so only the kernel time halves."""
    row = next(r for r in ROWS if r["id"] == "dgxc_v2508_h100")
    r = resolved(row["recipe"], *row["overrides"], "launch.gpu_type=h200")  # the measured GPU: rates 1:1
    stand = calibration.stand_in(r)
    assert stand.token_scale == 0.5 and not stand.full_recompute
    cal = _with_host_wait(r, 0.5)
    case, _ = cal.case_for(stand)
    costs = step_time._Costs(r, stand, case, hardware.gpu(cal.gpu))
    head, block, layer = case.head, case.moe_block, case.moe_layer
    assert costs.head.compute_s == pytest.approx(head.forward_backward_s * (0.5 * 0.5 + 0.5))
    # The MoE layer: its attention's kernels at the rank's tokens, the block's at the stand-in's (the
    # rank's copies), and the whole layer's wait once.
    fb = (layer.on_gpu_s - block.on_gpu_s) * 0.5 + block.on_gpu_s + layer.host_wait_s
    assert costs.moe.compute_s == pytest.approx(fb)


def test_a_part_whose_kernels_overlap_waits_for_nothing():
    part = calibration.PartTiming(1.0, 0.4, 0.5, 0.2, 100, kernel_s=1.2)  # side-stream kernels overlap
    assert part.host_wait_s == 0.0 and part.on_gpu_s == 1.0
    assert calibration.PartTiming(1.0, 0.4, 0.5, 0.2, 100).host_wait_s == 0.0  # not measured
    assert calibration.PartTiming(1.0, 0.4, 0.5, 0.2, 100, kernel_s=0.7).host_wait_s == pytest.approx(0.3)


def test_scaling_a_case_by_flops_keeps_the_time_it_waited_for_launches():
    cal = calibration.load()
    case = cal.cases["64f2a28f075c414d"]
    waited = dataclasses.replace(
        case,
        dense_layer=dataclasses.replace(
            case.dense_layer, kernel_s=case.dense_layer.forward_backward_s - 0.003
        ),
    )
    double = {k: 2 * v for k, v in case.flops.items()}
    dense = calibration.scaled(waited, double, case.local_expert_params, cal.gpu).dense_layer
    assert dense.kernel_s == pytest.approx(2 * (case.dense_layer.forward_backward_s - 0.003))
    assert dense.forward_backward_s == pytest.approx(dense.kernel_s + 0.003)
    plain = calibration.scaled(case, double, case.local_expert_params, cal.gpu).dense_layer
    assert plain.forward_backward_s == pytest.approx(2 * case.dense_layer.forward_backward_s)
    assert plain.kernel_s is None


def test_an_unmeasured_shape_is_scaled_from_a_measured_one_and_says_so():
    t = step_time.step_time(resolved("bridge_default_1024gpu", "model.moe_ffn_hidden_size=1024"))
    assert "scaled by FLOPs" in t.case and t.step_time_s > 0


def test_a_plan_without_a_measurement_of_its_precision_still_plans():
    cal = calibration.load()
    bf16_only = dataclasses.replace(cal, cases={k: c for k, c in cal.cases.items() if c.fp8_recipe is None})
    with pytest.raises(RecipeError, match="^calibration: no measured stand-in in blockwise"):
        step_time.step_time(resolved("h100_fp8_blockwise"), bf16_only)
    assert plan(recipe_of(build_task("h100_fp8_blockwise"))).step is not None


def _step(wrapper_s: float, after_backward_s: float, params: int = 10**8) -> calibration.StepTiming:
    """A step measurement whose DDP wrapper adds ``wrapper_s`` to the passes (their own time is not read;
    a borrowed case has none: proxy_1gpu's stand-in is not measured since the grouped GEMM)."""
    return calibration.StepTiming(
        params=params,
        param_tensors=100,
        fp8_params=False,
        unwrapped_forward_backward_s=1.0,
        wrapped_forward_backward_s=1.0 + wrapper_s,
        after_backward_s=after_backward_s,
    )


def test_a_measured_step_sets_the_optimizer_and_adds_the_wrapper_per_micro_batch():
    r = resolved("proxy_1gpu", "launch.gpu_type=h200")
    without = step_time.step_time(r, _with_case(r, step=None))
    assert without.parts["ddp_wrapper"] == 0.0  # a case measured before the step was: no wrapper part
    t = step_time.step_time(r, _with_case(r, step=_step(wrapper_s=0.01, after_backward_s=0.02)))
    weights = memory.rank_weights(r.recipe, r.sizes, r.chunks_of(0))
    params = weights.dense + weights.expert
    assert t.parts["optimizer"] == pytest.approx(0.02 * params / 10**8)  # 1 GPU: the shard is the rank
    assert t.parts["ddp_wrapper"] == pytest.approx(r.sizes.num_microbatches * 0.01 * params / 10**8)
    assert t.parts["compute"] == without.parts["compute"]


def test_a_bf16_wrapper_measured_faster_than_the_bare_passes_costs_nothing_but_fp8_parameters_may_save():
    r = resolved("proxy_1gpu", "launch.gpu_type=h200")
    faster = _step(wrapper_s=-0.005, after_backward_s=0.02)
    assert step_time.step_time(r, _with_case(r, step=faster)).parts["ddp_wrapper"] == 0.0
    fp8 = dataclasses.replace(faster, fp8_params=True)  # they skip the weights' cast: a real saving
    assert fp8.wrapper_s_per_param == pytest.approx(-0.005 / 10**8)
    assert step_time.step_time(r, _with_case(r, step=fp8)).parts["ddp_wrapper"] < 0


def test_gradient_accumulation_fusion_takes_the_wrapper_off_and_h100_pays_for_bandwidth():
    r = resolved("bridge_default_1024gpu")
    cal = _with_case(r, step=_step(wrapper_s=0.01, after_backward_s=0.02))
    assert step_time.step_time(r, cal).parts["ddp_wrapper"] > 0
    fused = resolved("bridge_default_1024gpu", "model.gradient_accumulation_fusion=True")
    assert step_time.step_time(fused, cal).parts["ddp_wrapper"] == 0.0
    h200 = resolved("bridge_default_1024gpu", "launch.gpu_type=h200")
    assert step_time.step_time(r, cal).parts["optimizer"] == pytest.approx(
        step_time.step_time(h200, cal).parts["optimizer"]
        * hardware.gpu("h200").hbm_tb_s
        / hardware.gpu("h100").hbm_tb_s,
        rel=1e-6,
    )


def _brute_destinations(experts, topk, groups, group_topk, ranks, domain):
    """Every routing choice of the model in _destinations, enumerated: unique ranks and domains reached."""
    import itertools

    per_rank = experts // ranks
    if groups:
        size = experts // groups
        choices = [
            sum(picks, ())
            for picked in itertools.combinations(range(groups), group_topk)
            for picks in itertools.product(
                *[
                    list(itertools.combinations(range(g * size, (g + 1) * size), topk // group_topk))
                    for g in picked
                ]
            )
        ]
    else:
        choices = list(itertools.combinations(range(experts), topk))
    near = far = 0
    for chosen in choices:
        hit = {e // per_rank for e in chosen}
        near += len({r for r in hit if 0 < r < domain})
        far += len({r // domain for r in hit if r >= domain})
    return near / len(choices), far / len(choices)


@pytest.mark.parametrize(
    "shape",
    [(8, 2, 0, 0, 4, 4), (8, 2, 0, 0, 4, 2), (16, 4, 4, 2, 8, 2), (16, 4, 4, 2, 4, 4), (12, 4, 0, 0, 6, 3)],
)
def test_the_flex_dispatcher_sends_a_token_once_per_destination(shape):
    assert step_time._destinations(*shape) == pytest.approx(_brute_destinations(*shape))


def test_hybridep_within_a_node_sends_half_the_all_to_all_copies_at_ep8():
    """DeepSeek-V3's 8 expert groups on EP8 are one group per GPU: a token reaches its 4 groups' GPUs, itself
    among them half the time (3.5 peers), where the all-to-all sends its 8 copies, 7 of them to peers."""
    row = next(r for r in ROWS if r["id"] == "mbridge_2602_b200_mxfp8_4096")  # B200 EP8, HybridEP
    flex = resolved(row["recipe"], *row["overrides"])
    alltoall = resolved(
        row["recipe"],
        *row["overrides"],
        "model.moe_token_dispatcher_type=alltoall",
        "model.moe_flex_dispatcher_backend=None",
    )
    assert (flex.dispatcher, alltoall.dispatcher, flex.sizes.ep) == ("flex", "alltoall", 8)
    assert step_time._ep_comm_s(flex, step_time.FITTED) == pytest.approx(
        step_time._ep_comm_s(alltoall, step_time.FITTED) * 3.5 / 7
    )


@pytest.mark.parametrize(
    "recompute",
    [
        ["model.recompute_granularity=selective", 'model.recompute_modules=["mla_up_proj","mlp","moe"]'],
        [
            "model.recompute_granularity=full",
            "model.recompute_method=uniform",
            "model.recompute_num_layers=1",
        ],
    ],
)
def test_recomputing_the_moe_layer_runs_its_dispatch_and_combine_again(recompute):
    base = ["launch.gpu_type=h100", "launch.num_nodes=128", "launch.gpus_per_node=8"]
    kept = step_time._ep_comm_s(resolved("bridge_default_1024gpu", *base), step_time.FITTED)
    again = step_time._ep_comm_s(resolved("bridge_default_1024gpu", *base, *recompute), step_time.FITTED)
    assert again == pytest.approx(kept * 6 / 4)


def test_a_borrowed_case_reads_the_wanted_ranks_expert_weights():
    cal = calibration.load()
    case = cal.cases["64f2a28f075c414d"]  # 8 local experts of 2048, blockwise FP8
    assert case.local_expert_params == 8 * 3 * 7168 * 2048
    twice = calibration.scaled(case, case.flops, 2 * case.local_expert_params, cal.gpu)
    extra = calibration.expert_weight_s(case, case.local_expert_params, cal.gpu)
    for name in ("moe_layer", "moe_block", "mtp"):
        assert getattr(twice, name).forward_backward_s == pytest.approx(
            getattr(case, name).forward_backward_s + extra[0]
        )
        assert getattr(twice, name).forward_s == pytest.approx(getattr(case, name).forward_s + extra[1])
    assert twice.dense_layer == case.dense_layer and twice.head == case.head
    # MLPerf's GB200 layout holds 8 local experts, the nearest measured case 4: the plan moved their weights.
    row = next(r for r in ROWS if r["id"] == "mlperf_v60_gb200_512")
    assert (
        "expert weights' traffic from 176,160,768 to 352,321,536"
        in step_time.step_time(resolved(row["recipe"], *row["overrides"])).case
    )


def _fit_script():
    """benchmarks/fit_step_time.py, loaded in this process (its planner imports are this test's)."""
    return load_script("benchmarks/fit_step_time.py", "fit_step_time")


def _result(folder: str, name: str) -> dict:
    return json.loads((ROOT / "benchmarks" / "results" / folder / name).read_text())


def _h100_calibration(name: str = "2026-12-06-h100-kernel-time-merged.json") -> calibration.Calibration:
    return calibration.from_dict(_result("calibration", name))  # its GPU is the scaling's reference


def _planned(row_id: str, cal: calibration.Calibration, constants: step_time.Constants = step_time.FITTED):
    """A published row's plan from ``cal`` and its ratio to the published step time, rounded as the fit's
    files are."""
    row = next(r for r in ROWS if r["id"] == row_id)
    t = step_time.step_time(resolved(row["recipe"], *row["overrides"]), cal, constants)
    return t, round(t.step_time_s / row["published"]["step_time_s"], 3)


def test_a_check_is_replayed_with_the_environment_it_ran_with():
    """A result made before run_recipe.py recorded the environment ran without the variables recipes
    gained since (the grouped GEMM), unless its command set them; a recorded environment is used as is."""
    fit = _fit_script()
    recipe = recipe_of(build_task("proxy_1gpu", []))
    assert recipe.env_vars["NVTE_GROUPED_LINEAR_USE_FUSED_GROUPED_GEMM"] == "1"
    old = fit.as_it_ran(recipe, {"command": "dsv3 pretrain --factory proxy_1gpu"}, [])
    assert "NVTE_GROUPED_LINEAR_USE_FUSED_GROUPED_GEMM" not in old.env_vars
    assert old.env_vars["NCCL_NVLS_ENABLE"] == "0"  # the rest of the recipe's environment stays
    asked = ["env_vars.NVTE_GROUPED_LINEAR_USE_FUSED_GROUPED_GEMM=1"]
    assert fit.as_it_ran(recipe, {}, asked).env_vars == recipe.env_vars
    recorded = {"NCCL_NVLS_ENABLE": "1"}
    assert fit.as_it_ran(recipe, {"env_vars": recorded}, []).env_vars == recorded
    h200 = recipe_of(build_task("proxy_1gpu", ["launch.gpu_type=h200"]))
    before = calibration.stand_in(resolve(fit.as_it_ran(h200, {}, []))).key
    assert before == "28eb6f370264695e" != calibration.stand_in(resolve(h200)).key  # per-expert: measured


def test_a_check_is_replayed_with_the_recompute_it_ran_with():
    """proxy_1gpu no longer recomputes on an H100; a result made before run_recipe.py recorded the
    recompute ran the selective one there, unless its command chose; a recorded recompute is used as is."""
    fit = _fit_script()
    h100 = recipe_of(build_task("proxy_1gpu", ["launch.gpu_type=h100"]))
    assert h100.model.recompute_granularity is None
    old = fit.as_it_ran(h100, {}, []).model
    assert (old.recompute_granularity, old.recompute_modules) == ("selective", list(proxy.RECOMPUTE_MODULES))
    asked = ["model.recompute_granularity=null"]
    assert fit.as_it_ran(h100, {}, asked).model.recompute_granularity is None
    h200 = recipe_of(build_task("proxy_1gpu", ["launch.gpu_type=h200"]))
    assert fit.as_it_ran(h200, {}, []).model == h200.model
    recorded = {"granularity": "selective", "modules": ["moe_act"]}
    again = fit.as_it_ran(h100, {"recompute": recorded}, []).model
    assert (again.recompute_granularity, again.recompute_modules) == ("selective", ["moe_act"])


@pytest.mark.parametrize(
    ("runs", "checks", "calibration_file"),
    [
        ("2026-12-06-h100", "2026-12-06-h100-checks.json", None),
        (
            "2026-12-06-h100",
            "2026-12-06-h100-checks-h100-calibrated.json",
            "2026-12-06-h100-diagnostic-merged.json",
        ),
        ("2026-12-06-h100-b", "2026-12-06-h100-b-checks.json", None),
        (
            "2026-12-06-h100-b",
            "2026-12-06-h100-b-checks-h100-calibrated.json",
            "2026-12-06-h100-kernel-time-merged.json",
        ),
        (
            "2026-12-06-h100-b-repeat",
            "2026-12-06-h100-b-repeat-h100-calibrated.json",
            "2026-12-06-h100-kernel-time-merged.json",
        ),
    ],
)
def test_the_h100_checks_are_what_the_planner_predicts_now(runs, checks, calibration_file):
    """The H100 checks (no H200 was lent): the planner scaled from H200, and calibrated on the H100."""
    cal = _h100_calibration(calibration_file) if calibration_file else calibration.load()
    committed = _result("step_time_fit", checks)
    now = _fit_script().one_gpu_checks(
        ROOT / "benchmarks" / "results" / "planner_checks" / runs, cal, step_time.FITTED
    )
    assert [(c["label"], c["gpu"], c["ratio"]) for c in now] == [
        (c["label"], c["gpu"], c["ratio"]) for c in committed["one_gpu_checks"]
    ]
    assert {c["gpu"] for c in now} == {"NVIDIA H100 80GB HBM3"}


def test_the_h100_rows_planned_from_the_h100s_own_stand_ins_are_the_committed_diagnostic():
    """The published H100 rows from the H100's own measured stand-ins (fit_step_time.py --calibration,
    committed constants): their compute without the H200 -> H100 scaling."""
    cal = _h100_calibration()
    committed = _result("step_time_fit", "2026-12-06-rows-from-h100-kernel-time.json")
    assert committed["constants"] == dataclasses.asdict(step_time.FITTED)
    own = [r for r in committed["rows"] if r["case"].startswith("measured stand-in")]
    assert {r["id"] for r in own} >= {"mbridge_2509_h100_fp8_blockwise_8192", "dgxc_v2505_h100_1024"}
    for row in own:
        assert _planned(row["id"], cal)[1] == row["ratio"], row["id"]


def test_the_constants_refitted_on_the_h100s_stand_ins_are_the_committed_diagnostic():
    """fit_step_time.py --calibration H100 --refit: the constants the fit finds on the H100's own stand-ins
    (collector off, kernel times) plan its fitted rows as committed, and fit them better than FITTED does;
    the B200 row that worsens most does so through the host part (its 8-GPU nodes launch uncaptured)."""
    import math

    cal = _h100_calibration()
    committed = _result("step_time_fit", "2026-12-06-refit-on-h100-kernel-time.json")
    refit = step_time.Constants(**committed["constants"])
    fitted = [r for r in committed["rows"] if r["role"] == "fitted"]
    assert len(fitted) == 3
    loss = {"refit": 0.0, "committed": 0.0}
    for row in fitted:
        assert _planned(row["id"], cal, refit)[1] == row["ratio"], row["id"]
        loss["refit"] += math.log(row["ratio"]) ** 2
        loss["committed"] += math.log(_planned(row["id"], cal)[1]) ** 2
    assert loss["refit"] < loss["committed"]
    b200 = next(r for r in committed["rows"] if r["id"] == "mbridge_2604_b200_mxfp8_4096")
    t, ratio = _planned(b200["id"], cal, refit)
    assert ratio == b200["ratio"] and t.parts["host"] > 0.3 * t.step_time_s


def test_refit_needs_another_gpus_calibration_and_the_published_rows(monkeypatch, capsys):
    script = _fit_script()
    for extra in ([], ["--checks", "some/dir", "--calibration", "c.json"]):
        monkeypatch.setattr("sys.argv", ["fit_step_time.py", "--out", "x.json", "--refit", *extra])
        with pytest.raises(SystemExit) as exit_:
            script.main()
        assert (
            exit_.value.code == 2 and "--refit fits on another GPU's --calibration" in capsys.readouterr().err
        )
