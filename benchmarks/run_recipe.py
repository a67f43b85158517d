"""Run a recipe for N steps through `dsv3 pretrain` and record the result under the benchmark protocol.

    python benchmarks/run_recipe.py proxy_1gpu --steps 12 [--shrink 1] [--compare-to stock.json] [k=v ...]

Writes <results-dir>/<date>-<gpu>-<label>.json and <...>.log (the command, then the first and last
lines of the training output). Every result says what the throughput depends on (benchmarks/README.md,
"Protocol"): its data (mock, or the text corpus with its token count), its routing (natural or
force-balanced), the per-expert load of the last step, and, for a shrunk recipe, what the shrink changed
and substituted. A profiled run (``profiling.use_pytorch_profiler=True``) also gets <...>.profile.json, its
traced step's kernel profile (``dsv3_recipes.report.kernel_profile``: GPU busy and idle time, kernels by
category), named by the result's ``kernel_profile``. Also: tokens/s, TFLOPS (ours and Megatron's), MFU,
peak memory, the memory census, the planner's memory estimate, losses, and speedup_vs_stock against
--compare-to.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from dsv3_recipes.launch import local_gpus
from dsv3_recipes.launch.submit import build_task, recipe_of
from dsv3_recipes.mlperf.rules import idx_token_count
from dsv3_recipes.recipe import hardware
from dsv3_recipes.recipe.rules import Capabilities
from dsv3_recipes.recipe.schema import Recipe, blend_prefixes
from dsv3_recipes.report import kernel_profile
from dsv3_recipes.report.cpu_result import in_repo
from dsv3_recipes.report.logs import megatron_throughput, parse_log
from dsv3_recipes.report.metrics import profiled_steps, warmup_steps

EXCERPT_LINES = 40
EXPERT_LOAD_KEYS = (
    "tokens_per_expert_min",
    "tokens_per_expert_mean",
    "tokens_per_expert_max",
    "worst_router_max_over_mean",
    "expert_bias_min",
    "expert_bias_max",
)


def data_condition(recipe: Recipe, corpus: str | None) -> dict[str, object]:
    """``{"kind": "mock"}`` or the text corpus: its name and how many tokens it holds."""
    if recipe.dataset.mock:
        return {"kind": "mock"}
    prefixes = blend_prefixes(recipe.dataset.data_paths)
    return {
        "kind": "text",
        "corpus": corpus or ",".join(os.path.basename(p) for p in prefixes),
        "tokens": sum(idx_token_count(p + ".idx") for p in prefixes),
        "tokenizer": in_repo(recipe.tokenizer.tokenizer_model),
    }


def routing_condition(recipe: Recipe) -> str:
    return "force_balanced" if recipe.model.moe_router_force_load_balancing else "natural"


def profile_trace(recipe: Recipe, since: float) -> str | None:
    """The PyTorch profiler's trace this run wrote: Bridge puts it beside the tensorboard directory (the
    result records it relative to the run's ``output_dir``, not as the GPU machine's path)."""
    if not recipe.profiling.use_pytorch_profiler:
        return None
    tensorboard = recipe.logger.tensorboard_dir or os.path.join(recipe.output_dir, "tensorboard")
    rank = recipe.profiling.profile_ranks[0] if recipe.profiling.profile_ranks else 0
    trace = Path(tensorboard).parent / "torch_profile" / f"rank-{rank}.json.gz"
    return str(trace) if trace.is_file() and trace.stat().st_mtime >= since else None


def write_kernel_profile(trace: str | None, path: Path, condition: dict) -> dict[str, str | None]:
    """The result's ``kernel_profile`` (the file's name, beside the result; it carries the run's
    ``condition``: data, routing, expert load), or why it has none: the run stands without it, so a trace
    the profile cannot read is reported, not fatal."""
    if trace is None:
        return {"kernel_profile": None}
    try:
        path.write_text(json.dumps(condition | kernel_profile.profile(trace), indent=1) + "\n")
    except (OSError, ValueError) as e:
        return {"kernel_profile": None, "kernel_profile_error": f"{type(e).__name__}: {e}"}
    return {"kernel_profile": path.name}


def planner_memory_gib(recipe: Recipe) -> dict[str, float]:
    """The planner's peak allocated estimate, and its model-state part (measured before step 0)."""
    from dsv3_recipes.plan.memory import GIB
    from dsv3_recipes.plan.preflight import plan

    rank = plan(recipe).memory
    static = sum(t.bytes for t in rank.states)
    return {"planner_mem_gib": rank.allocated_bytes / GIB, "planner_static_mem_gib": static / GIB}


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, refused in one line where it cannot run (planner_checks.sh's test parses its
    calls with it)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe")
    p.add_argument("--steps", type=int, help="train.train_iters (default 30; a shrunk run takes 10)")
    p.add_argument("--shrink", type=int, help="run the recipe shrunk to this many GPUs (dsv3 --shrink)")
    p.add_argument("--label", help="result name (default: the recipe name)")
    p.add_argument("--results-dir", default=str(Path(__file__).parent / "results"))
    p.add_argument("--compare-to", help="result JSON of the stock run, for speedup_vs_stock")
    p.add_argument("--corpus", help="name of the text corpus, for the result's data condition")
    p.add_argument(
        "--concurrent", type=int, default=1, help="runs sharing the GPU with this one (recorded: timings)"
    )
    p.add_argument("--timeout", type=int, default=900, help="seconds before the run is killed")
    p.add_argument("--full-log", help="also write the whole training log here")
    p.add_argument("overrides", nargs="*")
    args = p.parse_intermixed_args(argv)
    if args.shrink and args.steps is not None:
        p.error("--steps: a shrunk run takes the shrink's 10 steps (some recipes count samples)")
    return args


def main() -> int:
    args = arguments()
    label = args.label or args.recipe
    out_dir = Path(args.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = [] if args.shrink else [f"train.train_iters={args.steps or 30}"]
    overrides = [*steps, f"output_dir=/tmp/dsv3-bench/{label}", *args.overrides]
    shrink = ["--shrink", str(args.shrink)] if args.shrink else []
    dsv3_args = ["pretrain", "--factory", args.recipe, *shrink, *overrides]
    recipe = recipe_of(build_task(args.recipe, overrides, args.shrink, Capabilities.here()))
    command = [sys.executable, "-m", "dsv3_recipes.cli", *dsv3_args]
    started = datetime.datetime.now().timestamp()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, check=False, timeout=args.timeout)
        log, returncode = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        log = (err.stdout or b"").decode(errors="replace") + (err.stderr or b"").decode(errors="replace")
        returncode = f"timeout after {args.timeout} s"
    if args.full_log:
        Path(args.full_log).write_text(log)
    run = parse_log(log)
    if returncode != 0 or run.summary is None:
        header = f"$ {in_repo(shlex.join(['dsv3', *dsv3_args]))}\n"
        (out_dir / f"{label}.failed.log").write_text(header + log[-200_000:])
        print(log[-4000:])
        print(f"FAILED {label} (exit {returncode})")
        return 1

    rows = run.rows()
    trace = profile_trace(recipe, started)
    gpu = hardware.detect(run.summary["gpu"]).name
    result = {
        "recipe": args.recipe,
        "label": label,
        "date": datetime.date.today().isoformat(),
        "machine": f"{run.summary['num_gpus']} x {run.summary['gpu']}",
        "cpu": local_gpus.host_cpu(),  # a host-bound step follows it
        "gpu": run.summary["gpu"],
        "num_gpus": run.summary["num_gpus"],
        "command": in_repo(shlex.join(["dsv3", *dsv3_args])),
        # The environment it ran with, defaults included: the planner's replay of a check keys the stand-in
        # by it (benchmarks/fit_step_time.py, as_it_ran). The recipe refuses secrets in it.
        "env_vars": recipe.env_vars,
        # The recompute it ran, which proxy_1gpu's defaults choose by GPU (as_it_ran reads it too).
        "recompute": {
            "granularity": recipe.model.recompute_granularity,
            "modules": recipe.model.recompute_modules,
        },
        "data": data_condition(recipe, args.corpus),
        "routing": routing_condition(recipe),
        "expert_load_last_step": run.summary.get("expert_load_last_step"),
        "expert_load_per_step": [
            {"step": r["step"], **{k: r[k] for k in EXPERT_LOAD_KEYS if k in r}}
            for r in rows
            if "worst_router_max_over_mean" in r
        ],
        "concurrent_runs": args.concurrent,
        "steps": len(rows),
        "timing": run.summary["timing"],
        "step_time_s": run.summary["step_time_s"],
        "step_time_s_median": run.summary["step_time_s_median"],
        "tokens_per_s_per_gpu": run.summary["tokens_per_s_per_gpu"],
        "model_tflops_per_gpu": run.summary["model_tflops_per_gpu"],
        **megatron_throughput(
            run,
            recipe.tokens_per_step / run.summary["num_gpus"],
            warmup_steps(recipe),
            profiled_steps(recipe),
        ),
        "profiled_steps_left_out": sorted(profiled_steps(recipe)),
        "profile_trace": trace and os.path.relpath(trace, recipe.output_dir),
        "mfu": run.summary["mfu"],
        "peak_mem_allocated_gib": run.summary["peak_mem_allocated_gib"],
        "peak_mem_reserved_gib": run.summary["peak_mem_reserved_gib"],
        "static_mem_allocated_gib": run.summary.get("static_mem_allocated_gib"),
        "memory_after_step1_gib": run.summary.get("memory_after_step1_gib"),
        **planner_memory_gib(recipe),
        "first_lm_loss": rows[0].get("lm_loss"),
        "last_lm_loss": rows[-1].get("lm_loss"),
        "last_mtp_loss": next((r["mtp_1_loss"] for r in reversed(rows) if "mtp_1_loss" in r), None),
    }
    if args.concurrent > 1:
        result["timing_note"] = f"{args.concurrent} runs shared the GPU: times are not throughput figures"
    if recipe.shrink:
        result["shrunk_from"] = recipe.shrink.shrunk_from
        result["changed"] = len(recipe.shrink.changed)
        result["substituted"] = [dataclasses.asdict(c) for c in recipe.shrink.substituted]
    if args.compare_to:
        stock = json.loads(Path(args.compare_to).read_text())
        result["speedup_vs_stock"] = result["tokens_per_s_per_gpu"] / stock["tokens_per_s_per_gpu"]
        result["stock_result"] = Path(args.compare_to).name
    stem = f"{result['date']}-{gpu}-{label}"
    condition = {k: result[k] for k in ("data", "routing", "expert_load_last_step")}
    result |= write_kernel_profile(trace, out_dir / f"{stem}.profile.json", condition)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [line for line in log.splitlines() if "iteration" in line or "DSV3_" in line or "Error" in line]
    excerpt = lines[: EXCERPT_LINES // 2] + ["..."] + lines[-EXCERPT_LINES // 2 :]
    (out_dir / f"{stem}.log").write_text("$ " + result["command"] + "\n" + "\n".join(excerpt) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
