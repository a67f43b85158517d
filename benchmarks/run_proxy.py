"""Run a proxy recipe for N steps through `dsv3 pretrain` and record the result.

    python benchmarks/run_proxy.py proxy_1gpu --steps 30 [--compare-to stock.json] [key=value ...]

Writes <results-dir>/<date>-<gpu>-<label>.json (throughput, TFLOPS, MFU, peak memory, the planner's
memory estimate, losses, and speedup_vs_stock when --compare-to names the stock run's result) and
<...>.log, the raw log excerpt (first and last lines of the training output).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
from pathlib import Path

from dsv3_recipes import hardware
from dsv3_recipes.launch import build_task, recipe_of
from dsv3_recipes.report import parse_log

EXCERPT_LINES = 40


def planner_memory_gib(name: str, overrides: list[str]) -> dict[str, float]:
    """The planner's peak allocated estimate, and its model-state part (measured before step 0)."""
    from dsv3_recipes.memory import GIB
    from dsv3_recipes.plan import plan

    rank = plan(recipe_of(build_task(name, overrides))).memory
    static = sum(t.bytes for t in rank.states)
    return {"planner_mem_gib": rank.allocated_bytes / GIB, "planner_static_mem_gib": static / GIB}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--label", help="result name (default: the recipe name)")
    p.add_argument("--results-dir", default=str(Path(__file__).parent / "results"))
    p.add_argument("--compare-to", help="result JSON of the stock run, for speedup_vs_stock")
    p.add_argument("--full-log", help="also write the whole training log here")
    p.add_argument("overrides", nargs="*")
    args = p.parse_intermixed_args()

    label = args.label or args.recipe
    out_dir = Path(args.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    overrides = [f"train.train_iters={args.steps}", f"output_dir=/tmp/dsv3-bench/{label}", *args.overrides]
    command = [sys.executable, "-m", "dsv3_recipes.cli", "pretrain", "--factory", args.recipe, *overrides]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    log = proc.stdout + proc.stderr
    if args.full_log:
        Path(args.full_log).write_text(log)
    run = parse_log(log)
    if proc.returncode != 0 or run.summary is None:
        (out_dir / f"{label}.failed.log").write_text(log[-200_000:])
        print(log[-4000:])
        print(f"FAILED {label} (exit {proc.returncode})")
        return 1

    rows = run.rows()
    steady = [r for r in rows if r["step"] > 3]
    gpu = hardware.detect(run.summary["gpu"]).name
    result = {
        "recipe": args.recipe,
        "label": label,
        "date": datetime.date.today().isoformat(),
        "gpu": run.summary["gpu"],
        "num_gpus": run.summary["num_gpus"],
        "command": " ".join(["dsv3", *command[3:]]),
        "steps": len(rows),
        "step_time_s": run.summary["step_time_s"],
        "tokens_per_s_per_gpu": run.summary["tokens_per_s_per_gpu"],
        "model_tflops_per_gpu": run.summary["model_tflops_per_gpu"],
        "megatron_tflops_per_gpu": statistics.median(
            r["megatron_tflops_per_gpu"] for r in steady if "megatron_tflops_per_gpu" in r
        )
        if any("megatron_tflops_per_gpu" in r for r in steady)
        else None,
        "mfu": run.summary["mfu"],
        "peak_mem_allocated_gib": run.summary["peak_mem_allocated_gib"],
        "peak_mem_reserved_gib": run.summary["peak_mem_reserved_gib"],
        "static_mem_allocated_gib": run.summary.get("static_mem_allocated_gib"),
        "memory_after_step1_gib": run.summary.get("memory_after_step1_gib"),
        **planner_memory_gib(args.recipe, args.overrides),
        "first_lm_loss": rows[0].get("lm_loss"),
        "last_lm_loss": rows[-1].get("lm_loss"),
        "last_mtp_loss": next((r["mtp_1_loss"] for r in reversed(rows) if "mtp_1_loss" in r), None),
    }
    if args.compare_to:
        stock = json.loads(Path(args.compare_to).read_text())
        result["speedup_vs_stock"] = result["tokens_per_s_per_gpu"] / stock["tokens_per_s_per_gpu"]
        result["stock_result"] = Path(args.compare_to).name
    stem = f"{result['date']}-{gpu}-{label}"
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [line for line in log.splitlines() if "iteration" in line or "DSV3_" in line or "Error" in line]
    excerpt = lines[: EXCERPT_LINES // 2] + ["..."] + lines[-EXCERPT_LINES // 2 :]
    (out_dir / f"{stem}.log").write_text("$ " + result["command"] + "\n" + "\n".join(excerpt) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
