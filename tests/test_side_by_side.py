"""benchmarks/side_by_side.{py,sh}: TorchTitan's result from its log, the tables of one call, and the
script's behaviour where a run cannot start (the GPU runs themselves need the lent machine)."""

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).parent.parent
sbs = load_script("benchmarks/side_by_side.py", "side_by_side")


def tt_log(tps_by_step, load=True):
    """Lines as TorchTitan f1a96b34 (components/metrics.py), tt_dsv3_proxy and tt_expert_load print them."""
    lines = ["=== PREFLIGHT 2026-12-03T10:00:00Z", "NVIDIA H200, 143771 MiB, 570.124.06", "=== ATTEMPT A"]
    for step, tps in tps_by_step.items():
        lines.append(
            f"[rank0]:[titan] 2026-12-03 10:00:{step:02d},000 - root - INFO - step: {step:2}  "
            f"loss: {12 - step / 4:7.4f}"
            f"  grad_norm:  1.2345  memory: 84.10GiB(59.04%)  tps: {tps:,}  tflops: 330.12  mfu: 33.38%"
        )
        lines.append(
            f"[rank0]:[titan] ... - step: {step:2}  mem_peak_active: {60 + step / 10:.2f}GiB  "
            "mem_peak_reserved: 84.10GiB  flops_per_token: 3.9130e+09"
        )
        if load:
            lines.append(
                f'TT_EXPERT_LOAD {{"step": {step}, "routers": 7, "tokens_per_expert_min": 0.0, '
                f'"tokens_per_expert_mean": 3072.0, "tokens_per_expert_max": {3072 + 1000 * step}.0, '
                f'"worst_router_max_over_mean": {1 + step / 10}}}'
            )
    return "\n".join(lines) + "\n"


def test_torchtitans_result_leaves_out_the_first_steps_and_the_profiled_ones():
    tps = {s: 10_000 for s in range(1, 21)}
    tps[6], tps[7] = 20_000, 5_000  # steady steps 6-16 without 17-20: 9 of 10,000, one 20,000, one 5,000
    for s in range(17, 21):
        tps[s] = 1_000  # the profiler's warm-up and traced step
    r = sbs.torchtitan_result(tt_log(tps), "bash .tt/harness/run.sh OUT", sbs.steps_range("17-20"), 32768)
    assert r["steady_steps"] == list(range(6, 17))
    seconds = 9 * 32768 / 10_000 + 32768 / 20_000 + 32768 / 5_000
    assert r["tokens_per_s_per_gpu"] == pytest.approx(11 * 32768 / seconds)  # the total time's rate
    assert r["tokens_per_s_median"] == 10_000
    assert (r["machine"], r["routing"], r["data"]["corpus"]) == ("1 x NVIDIA H200", "natural", "bench-text")
    assert r["expert_load_last_step"]["worst_router_max_over_mean"] == 3.0
    assert [s["step"] for s in r["expert_load_per_step"]] == list(range(1, 21))
    assert r["peak_mem_active_gib"] == 62.0 and r["peak_mem_reserved_gib"] == 84.1
    assert (r["first_lm_loss"], r["last_lm_loss"]) == (11.75, 7.0)
    assert sbs.steps_range("17-20,3") == {3, 17, 18, 19, 20}
    balanced = sbs.torchtitan_result(
        tt_log(tps), f"TT_EXTRA='{sbs.TT_FORCE_BALANCE}' run.sh", frozenset(), 32768, "torchtitan_balanced"
    )
    assert (balanced["label"], balanced["routing"]) == ("torchtitan_balanced", "force_balanced")


def test_a_log_without_steps_is_an_error():
    with pytest.raises(ValueError, match="no TorchTitan step line"):
        sbs.torchtitan_result("FATAL: .tt not carried/complete\n", "cmd", frozenset(), 32768)
    with pytest.raises(ValueError, match="no steady step"):
        sbs.torchtitan_result(tt_log({1: 5, 2: 5}, load=False), "cmd", frozenset(), 32768)


def proxy_result(label, tps, tflops, command, worst):
    return {
        "recipe": "proxy_1gpu",
        "label": label,
        "command": command,
        "tokens_per_s_per_gpu": tps,
        "megatron_tokens_per_s_per_gpu": tps,
        "megatron_tflops_per_gpu": tflops,
        "peak_mem_allocated_gib": 66.1,
        "expert_load_last_step": {"worst_router_max_over_mean": worst},
        "expert_load_per_step": [
            {"step": 1, "worst_router_max_over_mean": 1.2},
            {"step": 2, "worst_router_max_over_mean": worst},
        ],
        "steps": 20,
    }


def test_the_report_compares_with_torchtitan_and_says_which_target_is_met(tmp_path):
    tt = sbs.torchtitan_result(
        tt_log({s: 80_000 for s in range(1, 21)}), "tt", sbs.steps_range("17-20"), 32768
    )
    nomtp = proxy_result("nomtp", 120_000, 420.0, "dsv3 pretrain ... model.mtp_num_layers=None", 10.67)
    mtp = proxy_result("mtp", 72_000, 300.0, "dsv3 pretrain ...", 2.0)
    entries = []
    for label, result in (("torchtitan", tt), ("nomtp", nomtp), ("mtp", mtp)):
        path = tmp_path / f"{label}.json"
        path.write_text(json.dumps(result))
        entries.append(f"{label}={path}")
    text = sbs.report(entries)
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    # Megatron's FLOPs per token from the run without MTP (420 TFLOPS at 120,000 tokens/s), at 80,000.
    assert rows["torchtitan"].startswith(
        "| torchtitan | 80,000 | 1.00 | 280.0* (28.3%) | 62.0 | 3.00 (3.00) | 20, 17-20 |"
    )
    assert rows["nomtp"].startswith(
        "| nomtp | 120,000 | 1.50 | 420.0 (42.5%) | 66.1 | 10.67 (10.67) | 20, none |"
    )
    assert (
        "nomtp (no MTP): 1.50x TorchTitan (target 1.30x), 42.5% MFU by Megatron's formula (target 40%): met"
        in text
    )
    assert "mtp (MTP): 0.90x TorchTitan's no-MTP tokens/s (target 1.00x): NOT met" in text
    assert sbs.targets({"nomtp": nomtp}) == ["targets: no TorchTitan run in this call, so no ratio to it"]
    fp8 = {
        **nomtp,
        "command": "dsv3 pretrain ... model.mtp_num_layers=None mixed_precision.fp8_recipe=blockwise",
    }
    assert sbs.targets({"torchtitan": tt, "fp8": fp8})[0].startswith(
        "fp8 (FP8, against TorchTitan's BF16 run: no TorchTitan FP8 run) (no MTP): 1.50x TorchTitan"
    )
    # Its MFU is marked as against the BF16 peak, like every row; a BF16 run that names no FP8 is not.
    table = sbs.throughput_table([("nomtp", nomtp), ("fp8", fp8)])
    assert (
        "| fp8 | 120,000 | 1.00 | 420.0 (42.5%†) |" in table
        and "| nomtp | 120,000 | 1.00 | 420.0 (42.5%) |" in table
    )
    assert "† FP8: MFU against the BF16 dense peak" in table
    assert not sbs.is_fp8({"command": "dsv3 pretrain ... mixed_precision.fp8_recipe=None"})
    assert "†" not in sbs.throughput_table([("nomtp", nomtp)])


def test_each_proxy_run_is_held_against_the_torchtitan_run_of_its_own_routing():
    natural = sbs.torchtitan_result(tt_log({s: 80_000 for s in range(1, 21)}), "tt", frozenset(), 32768)
    balanced = {**natural, "label": "tt_b", "routing": "force_balanced", "tokens_per_s_per_gpu": 100_000.0}
    nomtp = proxy_result("nomtp", 120_000, 420.0, "x model.mtp_num_layers=None", 10.67)
    nomtp_b = {**nomtp, "routing": "force_balanced"}
    lines = sbs.targets({"tt": natural, "tt_b": balanced, "nomtp": nomtp, "nomtp_b": nomtp_b})
    assert lines[0].startswith("nomtp (no MTP): 1.50x TorchTitan")
    assert lines[1].startswith("nomtp_b (force_balanced routing, both) (no MTP): 1.20x TorchTitan")
    assert sbs.targets({"tt": natural, "nomtp_b": nomtp_b}) == [
        "nomtp_b: no TorchTitan run with force_balanced routing in this call, so no ratio to it"
    ]


def test_the_report_adds_the_kernel_tables_of_the_runs_that_were_profiled(tmp_path):
    from dsv3_recipes.report import kernel_profile as kp

    trace = {
        "traceEvents": [
            {
                "ph": "X",
                "cat": "user_annotation",
                "name": "ProfilerStep#18",
                "pid": 1,
                "tid": 1,
                "ts": 0,
                "dur": 1000,
            },
            {
                "ph": "X",
                "cat": "cuda_runtime",
                "name": "cudaLaunchKernel",
                "pid": 1,
                "tid": 1,
                "ts": 10,
                "dur": 1,
                "args": {"correlation": 1},
            },
            {
                "ph": "X",
                "cat": "kernel",
                "name": "flash_fwd_kernel",
                "pid": 0,
                "tid": 7,
                "ts": 20,
                "dur": 400,
                "args": {"correlation": 1},
            },
        ]
    }
    (tmp_path / "trace.json").write_text(json.dumps(trace))
    assert kp.main([str(tmp_path / "trace.json"), "--json", str(tmp_path / "profile.json")]) == 0
    result = proxy_result("nomtp", 1.0, 1.0, "x model.mtp_num_layers=None", 1.0)
    (tmp_path / "r.json").write_text(json.dumps(result))
    md = tmp_path / "out.md"
    assert (
        sbs.main(["report", f"nomtp={tmp_path / 'r.json'},{tmp_path / 'profile.json'}", "--md", str(md)]) == 0
    )
    assert "| attention forward | 0.4 |" in md.read_text()


def test_the_script_is_valid_bash_and_fails_in_a_line_when_a_run_cannot_start(tmp_path):
    script = ROOT / "benchmarks" / "side_by_side.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    out = tmp_path / "out"
    env = {
        **os.environ,
        "RUNS": "torchtitan|;nomtp|model.mtp_num_layers=None",
        "BUDGET": "60",
        "WORK": str(tmp_path / "work"),
    }
    # From a directory without .tt: TorchTitan cannot run; 60 s is too little to start the proxy.
    done = subprocess.run(
        ["bash", str(script), str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    progress = (out / "progress.log").read_text()
    assert "torchtitan: .tt/harness missing (benchmarks/torchtitan/make_assets.sh)" in progress
    assert "nomtp: " in progress and "left, not started" in progress
    assert "done: 0 of 2 runs with results" in progress
    assert (out / "results.tgz").is_file()


STUB_RUN_RECIPE = r'''
"""Stand-in for benchmarks/run_recipe.py: a result, a profiler trace and its kernel profile, where the real
one writes them (the profile by the same call)."""
import argparse, datetime, gzip, json, pathlib, shlex, sys
from dsv3_recipes.report import kernel_profile
p = argparse.ArgumentParser()
p.add_argument("recipe"); p.add_argument("--steps"); p.add_argument("--label"); p.add_argument("--corpus")
p.add_argument("--results-dir"); p.add_argument("--timeout"); p.add_argument("--full-log")
p.add_argument("overrides", nargs="*")
a = p.parse_intermixed_args()
out = pathlib.Path(next(o.split("=", 1)[1] for o in a.overrides if o.startswith("output_dir=")))
trace = out / "torch_profile" / "rank-0.json.gz"
trace.parent.mkdir(parents=True)
def ev(cat, name, pid, tid, ts, dur, **args):
    return {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid, "ts": ts, "dur": dur, "args": args}
events = [ev("user_annotation", "ProfilerStep#18", 1, 1, 0, 500),
          ev("cuda_runtime", "cudaLaunchKernel", 1, 1, 5, 1, correlation=1),
          ev("kernel", "nvjet_tst_gemm", 0, 7, 10, 300, correlation=1)]
with gzip.open(trace, "wt") as f:
    json.dump({"traceEvents": events}, f)
tps = 120000.0 if "model.mtp_num_layers=None" in a.overrides else 70000.0
balanced = "model.moe_router_force_load_balancing=True" in a.overrides
result = {"recipe": a.recipe, "label": a.label, "command": shlex.join(["dsv3", *a.overrides]),
          "routing": "force_balanced" if balanced else "natural",
          "tokens_per_s_per_gpu": tps, "megatron_tokens_per_s_per_gpu": tps,
          "megatron_tflops_per_gpu": tps / 300,
          "steps": int(a.steps), "profiled_steps_left_out": [17, 18, 19],
          "profile_trace": str(trace.relative_to(out))}
stem = f"{datetime.date.today()}-h200-{a.label}"
pathlib.Path(a.results_dir, f"{stem}.profile.json").write_text(json.dumps(kernel_profile.profile(trace)))
result["kernel_profile"] = f"{stem}.profile.json"
pathlib.Path(a.results_dir, f"{stem}.json").write_text(json.dumps(result))
pathlib.Path(a.full_log).write_text("log\n")
'''

STUB_TT_RUN = r"""#!/usr/bin/env bash
# Stand-in for ../shared/torchtitan/run.sh: its log and, where the profiler options say, a trace.
OUT=$1; mkdir -p "$OUT"
case ":$PYTHONPATH:" in *"/benchmarks/torchtitan:"*) ;; *) echo "plug-in not on PYTHONPATH"; exit 9 ;; esac
set -- $TT_EXTRA
while [ $# -gt 0 ]; do
  case $1 in --experimental.custom_import) PLUGIN=$2 ;; --profiling.save_traces_folder) TRACES=$2 ;;
    --profiling.profile_freq) FREQ=$2 ;; --training.debug_moe_force_load_balance) TPS=100,000 ;; esac; shift
done
[ "$PLUGIN" = tt_expert_load ] || exit 8
python3 - "$OUT/torchtitan.log" "$TRACES/iteration_$FREQ" "$STEPS" "${TPS:-80,000}" <<'PY'
import json, pathlib, sys
log, traces, steps, tps = sys.argv[1], pathlib.Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
lines = ["NVIDIA H200, 143771 MiB, 570.124.06"]
for s in range(1, steps + 1):
    lines.append(f"step: {s:2}  loss:  7.0000  grad_norm:  1.0000  memory: 84.10GiB(59.04%)  tps: {tps}  "
                 "tflops: 330.12  mfu: 33.38%")
pathlib.Path(log).write_text("\n".join(lines) + "\n")
traces.mkdir(parents=True)
def ev(cat, name, pid, tid, ts, dur, **args):
    return {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid, "ts": ts, "dur": dur, "args": args}
events = [ev("user_annotation", f"ProfilerStep#{steps - 1}", 1, 1, 0, 400),
          ev("cuda_runtime", "cudaLaunchKernel", 1, 1, 5, 1, correlation=1),
          ev("kernel", "flash_fwd_kernel", 0, 7, 10, 200, correlation=1)]
(traces / "rank0_trace.json").write_text(json.dumps({"traceEvents": events}))
PY
echo "steps 6..20 (n=15): tps median 80,000" > "$OUT/torchtitan_summary.txt"
"""


def _run_with_stand_ins(tmp_path, runs: str | None, **knobs: str) -> tuple[subprocess.CompletedProcess, Path]:
    """benchmarks/side_by_side.sh with stand-ins for run_recipe.py and TorchTitan's run.sh (same
    arguments, same files out), from a copy of the benchmarks it needs."""
    import sys

    (tmp_path / "benchmarks" / "torchtitan").mkdir(parents=True)
    for name in ("side_by_side.sh", "side_by_side.py"):
        (tmp_path / "benchmarks" / name).write_text((ROOT / "benchmarks" / name).read_text())
    (tmp_path / "benchmarks" / "run_recipe.py").write_text(STUB_RUN_RECIPE)
    (tmp_path / ".tt" / "harness").mkdir(parents=True)
    (tmp_path / ".tt" / "harness" / "run.sh").write_text(STUB_TT_RUN)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python3").symlink_to(sys.executable)
    out = tmp_path / "out"
    env = {
        **os.environ,
        "WORK": str(tmp_path / "work"),
        "PYTHONPATH": str(ROOT),
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
    }
    env.pop("RUNS", None)
    env.pop("GPU_TYPE", None)
    env.update(knobs)
    if runs is not None:
        env["RUNS"] = runs
    done = subprocess.run(
        ["bash", "benchmarks/side_by_side.sh", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, out


def test_the_scripts_plumbing_with_stand_in_runs(tmp_path):
    """Every run's result, kernel profile and trace reach OUT_DIR and the table has them all."""
    done, out = _run_with_stand_ins(tmp_path, None)
    assert sorted(p.name for p in out.iterdir()) == [
        "progress.log",
        "results.tgz",
        "side_by_side.md",
        "trace-mtp.json.gz",
        "trace-nomtp.json.gz",
        "trace-torchtitan.json.gz",
    ]
    table = (out / "side_by_side.md").read_text()
    assert "| nomtp | 120,000 | 1.50 |" in table and "| mtp | 70,000 | 0.88 |" in table
    assert "| category | torchtitan ms | nomtp ms | mtp ms |" in table
    assert "| attention forward | 0.2 | 0.0 | 0.0 |" in table  # TorchTitan's stand-in kernel
    assert "Profiled steps: torchtitan: step 20, nomtp: step 18, mtp: step 18." in table
    assert "done: 3 of 3 runs with results" in done.stdout
    progress = (out / "progress.log").read_text()
    assert "nomtp: 120,000 tokens/s, Megatron 400.0 TFLOPS" in progress
    assert "torchtitan: exit 0 (steps 6..20" in progress


def test_a_balanced_torchtitan_run_sits_beside_the_natural_one(tmp_path):
    """Two TorchTitan runs in one call, each under its own label, each the reference of its routing."""
    runs = (
        "torchtitan|;torchtitan_balanced|--training.debug_moe_force_load_balance;"
        "nomtp_balanced|model.mtp_num_layers=None model.moe_router_force_load_balancing=True"
    )
    done, out = _run_with_stand_ins(tmp_path, runs)
    traces = {"trace-torchtitan.json.gz", "trace-torchtitan_balanced.json.gz"}
    assert traces <= {p.name for p in out.iterdir()}
    table = (out / "side_by_side.md").read_text()
    assert "| torchtitan_balanced | 100,000 | 1.25 |" in table
    assert "nomtp_balanced (force_balanced routing, both) (no MTP): 1.20x TorchTitan" in table
    assert "done: 3 of 3 runs with results" in done.stdout


def test_a_warm_up_run_is_recorded_but_left_out_of_the_tables_and_the_count(tmp_path):
    """In three of four calls the first proxy run ran 6-13% slower than the same run later: a warm-up
    takes that place, its result kept in the bundle under warmup/, not in the tables."""
    runs = "warmup|model.mtp_num_layers=None;torchtitan|;nomtp|model.mtp_num_layers=None"
    done, out = _run_with_stand_ins(tmp_path, runs)
    table = (out / "side_by_side.md").read_text()
    assert "| nomtp | 120,000 | 1.50 |" in table
    assert "warmup" not in table
    assert "done: 2 of 2 runs with results" in done.stdout
    progress = (out / "progress.log").read_text()
    started = "warmup: warm-up of 8 steps, left out: run_recipe.py proxy_1gpu model.mtp_num_layers=None"
    assert started in progress
    assert "warmup: warm-up exit 0" in progress
    with tarfile.open(out / "results.tgz") as bundle:
        names = bundle.getnames()
        warm = next(n for n in names if n.startswith("warmup/") and n.endswith("-warmup.json"))
        assert json.load(bundle.extractfile(warm))["steps"] == 8  # WARMUP_STEPS reached run_recipe.py
    assert not any(n.startswith("results/") and "warmup" in n for n in names)


def test_the_proxy_runs_take_the_h200_defaults_unless_gpu_type_names_another(tmp_path):
    """The issue's comparison uses the H200 defaults; GPU_TYPE=h100 gives the proxy an H100 user runs."""
    for gpu_type, expected in ((None, "launch.gpu_type=h200"), ("h100", "launch.gpu_type=h100")):
        work = tmp_path / (gpu_type or "default")
        work.mkdir()
        _, out = _run_with_stand_ins(
            work, "nomtp|model.mtp_num_layers=None", **({"GPU_TYPE": gpu_type} if gpu_type else {})
        )
        with tarfile.open(out / "results.tgz") as bundle:
            result = next(n for n in bundle.getnames() if n.endswith("-nomtp.json"))
            assert expected in json.load(bundle.extractfile(result))["command"].split()
