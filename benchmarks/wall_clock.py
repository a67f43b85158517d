"""Throughput of recorded runs by Megatron's clock, from their committed log excerpts.

    python benchmarks/wall_clock.py benchmarks/results/h200_text*/*.json > OUT.json

Results recorded before the project's step timer counted the time between steps (commit 1e675f9 and
earlier) took the median of each step's own time. That left out Megatron's manual GC, which runs after
every ``train.manual_gc_interval``-th step (5 in those runs). Megatron's "elapsed time per iteration"
counts it. This reads those lines back and gives tokens/s and TFLOPS over the steps after warm-up from
their total time (``report.megatron_throughput``), beside the figure the result recorded. The recipe
(tokens per step, CUDA graphs) is rebuilt from the result's command.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from dsv3_recipes.cli import parser
from dsv3_recipes.launch.submit import build_task, recipe_of
from dsv3_recipes.recipe.rules import Capabilities
from dsv3_recipes.recipe.schema import Recipe
from dsv3_recipes.report.logs import megatron_throughput, parse_log
from dsv3_recipes.report.metrics import warmup_steps


def result_recipe(result: dict) -> Recipe:
    """The recipe a result ran, rebuilt from its command as `dsv3` reads it."""
    args = parser().parse_args(shlex.split(result["command"])[1:])
    return recipe_of(build_task(args.name, args.overrides, args.shrink, Capabilities.here()))


def wall_clock(result_path: Path) -> dict[str, object]:
    result = json.loads(result_path.read_text())
    recipe = result_recipe(result)
    log = parse_log(result_path.with_suffix(".log").read_text())
    by_megatron = megatron_throughput(log, recipe.tokens_per_step / result["num_gpus"], warmup_steps(recipe))
    ratio = result["tokens_per_s_per_gpu"] / by_megatron["megatron_tokens_per_s_per_gpu"]
    return {
        "result": str(result_path),
        "machine": result["machine"],
        "date": result["date"],
        "data": result["data"],
        "routing": result["routing"],
        "warmup_steps_left_out": warmup_steps(recipe),
        "recorded_tokens_per_s_per_gpu": result["tokens_per_s_per_gpu"],
        "recorded_megatron_tflops_per_gpu": result.get("megatron_tflops_per_gpu"),
        "recorded_timing": result.get("timing", "median of each step's own time (GC between steps left out)"),
        **by_megatron,
        "recorded_over_megatron": ratio,
        # The project's FLOPs per token at Megatron's tokens/s (what plan.MEASURED_MFU takes).
        "mfu_by_megatron_clock": result["mfu"] / ratio,
    }


def main(paths: list[str]) -> int:
    if not paths:
        print("usage: wall_clock.py RESULT.json...", file=sys.stderr)
        return 2
    rows = [wall_clock(Path(p)) for p in paths]
    print(
        json.dumps(
            {"command": shlex.join(["python", "benchmarks/wall_clock.py", *paths]), "runs": rows}, indent=1
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
