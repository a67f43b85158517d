"""Profiled steps stay out of the throughput figures; every step's metrics line carries its expert load."""

import gzip
import json

import pytest
from conftest import load_script

from dsv3_recipes.launch.submit import build_task, recipe_of
from dsv3_recipes.recipe import hardware
from dsv3_recipes.report import logs, metrics

PROFILED = [
    "profiling.use_pytorch_profiler=True",
    "profiling.profile_step_start=18",
    "profiling.profile_step_end=19",
]


def at(step, seconds, load=None):
    m = metrics.step_metrics(
        step=step,
        lm_loss=1.0,
        step_time_s=seconds,
        tokens_per_step=4096,
        flops_per_token=1e9,
        world_size=1,
        gpu=hardware.GPUS["h200"],
        mem_allocated_bytes=0,
        mem_reserved_bytes=0,
        fp8=False,
    )
    m.expert_load = load
    return m


def test_the_profilers_windows():
    recipe = recipe_of(build_task("proxy_1gpu", PROFILED))
    # warm-up in 17, records 18, writes the trace during 19
    assert metrics.profiled_steps(recipe) == {17, 18, 19}
    nsys = recipe_of(
        build_task(
            "proxy_1gpu",
            [
                "profiling.use_nsys_profiler=True",
                "profiling.profile_step_start=10",
                "profiling.profile_step_end=12",
            ],
        )
    )
    assert metrics.profiled_steps(nsys) == {11, 12}
    assert metrics.profiled_steps(recipe_of(build_task("proxy_1gpu"))) == frozenset()


def test_bridges_pytorch_profiler_records_the_step_the_window_says(monkeypatch, tmp_path):
    """Megatron-Bridge 0.6.2's own profiler set-up and per-step calls, in train.py's order, on the CPU:
    the trace holds ProfilerStep#18 (Megatron's iteration 18), written during iteration 19."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("megatron.bridge", reason="needs the train extra")
    from megatron.bridge.training import profiling as bridge
    from megatron.bridge.training.config import ProfilingConfig

    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 0)
    config = ProfilingConfig(use_pytorch_profiler=True, profile_step_start=18, profile_step_end=19)
    prof = bridge.initialize_pytorch_profiler(config, str(tmp_path / "tensorboard"))
    trace = tmp_path / "torch_profile" / "rank-0.json.gz"
    prof.start()
    written_during = None
    step = 0
    while step < 20:  # train.py: handle_profiling_step, the step, step += 1, handle_profiling_stop
        bridge.handle_profiling_step(config, step, 0, prof)
        if written_during is None and trace.exists():
            written_during = step + 1  # Megatron's iteration number of the step running now
        with torch.profiler.record_function(f"iteration {step + 1}"):
            torch.ones(4).sum()
        step += 1
        bridge.handle_profiling_stop(config, step, 0, prof)
    with gzip.open(trace) as f:
        events = json.load(f)["traceEvents"]
    names = {e["name"] for e in events if e.get("name", "").startswith(("ProfilerStep#", "iteration "))}
    assert names == {"ProfilerStep#18", "iteration 18"}
    recipe = recipe_of(build_task("proxy_1gpu", PROFILED))
    assert {17, 18, written_during} == metrics.profiled_steps(recipe)


def test_summary_and_megatrons_clock_leave_the_profiled_steps_out():
    steps = [at(1, 9.0), at(2, 1.0), at(3, 1.0), at(4, 5.0), at(5, 1.0)]
    s = metrics.summarize(steps, warmup_steps=1, left_out=frozenset({4}))
    assert s["steady_steps"] == 3 and s["tokens_per_s_per_gpu"] == pytest.approx(4096)
    assert s["profiled_steps_left_out"] == [4]
    text = "\n".join(
        f" [2026] iteration {n}/ 5 | elapsed time per iteration (ms): {ms} | "
        "throughput per GPU (TFLOP/s/GPU): 1.0 |"
        for n, ms in ((1, 9000), (2, 1000), (3, 1000), (4, 5000), (5, 1000))
    )
    by_megatron = logs.megatron_throughput(logs.parse_log(text), 4096, 1, left_out=frozenset({4}))
    assert by_megatron["megatron_tokens_per_s_per_gpu"] == pytest.approx(4096)
    assert logs.megatron_throughput(logs.parse_log(text), 4096, 1)[
        "megatron_tokens_per_s_per_gpu"
    ] == pytest.approx(4 * 4096 / 8)


def test_each_metrics_line_carries_the_steps_expert_load():
    load = {"routers": 7, "tokens_per_expert_max": 32768.0, "worst_router_max_over_mean": 10.67}
    line = at(3, 1.0, load).to_line()
    row = logs.parse_log(line).rows()[0]
    assert row["step"] == 3 and row["worst_router_max_over_mean"] == 10.67 and row["routers"] == 7
    assert "expert_load" not in row
    assert "router max/mean" in logs.render_table(logs.parse_log(line)).splitlines()[0]
    assert "10.67" in logs.render_table(logs.parse_log(line)).splitlines()[1]
    assert "worst_router" not in at(3, 1.0).to_line()  # no MoE: no load fields


def test_expert_load_reports_the_bias_range_and_the_callback_logs_it_every_step(monkeypatch, capsys):
    torch = pytest.importorskip("torch")
    pytest.importorskip("megatron.bridge", reason="needs the train extra")
    import types

    from dsv3_recipes.train import callbacks

    class Router(torch.nn.Module):
        def __init__(self, bias):
            super().__init__()
            self.register_buffer("expert_bias", torch.tensor(bias))

        def forward(self, route):
            routing_map = torch.nn.functional.one_hot(route, num_classes=2).bool()
            return routing_map.float(), routing_map

    routers = [Router([0.0, -0.003]), Router([0.002, 0.001])]
    load = callbacks.ExpertLoad(routers, experts=2, device="cpu")
    for name, value in {
        "synchronize": lambda: None,
        "max_memory_allocated": lambda: 0,
        "max_memory_reserved": lambda: 0,
        "get_device_name": lambda: "NVIDIA H200",
    }.items():
        monkeypatch.setattr(torch.cuda, name, value)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 1)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 0)
    callback = callbacks.ThroughputCallback(recipe_of(build_task("proxy_1gpu")))
    callback._expert_load = load
    for step, route in enumerate(([0, 0, 0, 1], [0, 1, 0, 1])):
        context = types.SimpleNamespace(
            state=types.SimpleNamespace(train_state=types.SimpleNamespace(step=step)),
            optimizer=None,
            loss_dict={"lm loss": 1.0},
        )
        callback.on_train_step_start(context)
        for r in routers:
            r(torch.tensor(route))
        callback.on_train_step_end(context)
    rows = logs.parse_log(capsys.readouterr().out).rows()
    assert [r["worst_router_max_over_mean"] for r in rows] == [1.5, 1.0]
    assert [r["tokens_per_expert_max"] for r in rows] == [3.0, 2.0]
    assert (rows[0]["expert_bias_min"], rows[0]["expert_bias_max"]) == pytest.approx((-0.003, 0.002))


def test_run_recipe_finds_the_trace_this_run_wrote(tmp_path):
    import os

    run_recipe = load_script("benchmarks/run_recipe.py", "run_recipe")
    recipe = recipe_of(build_task("proxy_1gpu", [*PROFILED, f"output_dir={tmp_path}"]))
    trace = tmp_path / "torch_profile" / "rank-0.json.gz"
    assert run_recipe.profile_trace(recipe, since=0) is None
    trace.parent.mkdir()
    trace.write_bytes(b"")
    assert run_recipe.profile_trace(recipe, since=0) == str(trace)
    os.utime(trace, (1000, 1000))
    assert run_recipe.profile_trace(recipe, since=2000) is None  # an earlier run's
    assert (
        run_recipe.profile_trace(recipe_of(build_task("proxy_1gpu", [f"output_dir={tmp_path}"])), 0) is None
    )


def test_run_recipe_writes_the_traced_steps_kernel_profile_beside_the_result(tmp_path):
    """One place turns a run's trace into its kernel profile (planner_checks.sh and side_by_side.sh read
    it); a trace it cannot read leaves the result without one and says why."""
    import json

    from test_kernel_profile import TraceBuilder

    run_recipe = load_script("benchmarks/run_recipe.py", "run_recipe")
    trace = TraceBuilder()
    trace.step(9, 0, 500)
    trace.kernel("nvjet_tst_gemm", launch_ts=5, ts=10, dur=300)
    trace = trace.write(tmp_path / "rank-0.json.gz")
    condition = {"data": {"kind": "mock"}, "routing": "force_balanced", "expert_load_last_step": None}
    out = tmp_path / "2026-12-06-h200-proxy.profile.json"
    assert run_recipe.write_kernel_profile(str(trace), out, condition) == {"kernel_profile": out.name}
    written = json.loads(out.read_text())
    (step,) = written["steps"]
    assert step["profiler_step"] == 9
    assert {k: written[k] for k in condition} == condition  # the run's data and routing, as its result
    assert run_recipe.write_kernel_profile(None, out, condition) == {"kernel_profile": None}
    trace.write_bytes(b"truncated")
    broken = run_recipe.write_kernel_profile(str(trace), tmp_path / "broken.profile.json", condition)
    assert broken["kernel_profile"] is None
    assert (
        broken["kernel_profile_error"].startswith("ValueError: ")
        and "not a readable Chrome trace" in broken["kernel_profile_error"]
    )
    assert not (tmp_path / "broken.profile.json").exists()
