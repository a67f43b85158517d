"""Throughput of recorded runs by Megatron's clock, from their committed log excerpts.

    python benchmarks/wall_clock.py benchmarks/results/h200_text*/*.json > OUT.json

Results recorded before the project's step timer counted the time between steps (commit 1e675f9 and
earlier) took the median of each step's own time. That left out Megatron's manual GC, which runs after
every ``train.manual_gc_interval``-th step (5 in those runs). Megatron's "elapsed time per iteration"
counts it. This reads those lines back and gives tokens/s and TFLOPS over the steps after warm-up from
their total time (``report.megatron_throughput``), beside the figure the result recorded. The caller
gives the recipe the result ran (tokens per step, CUDA graphs): ``cli.recipe_of_command`` rebuilds it.
"""

from __future__ import annotations

import json
from pathlib import Path

from dsv3_recipes.recipe.schema import Recipe
from dsv3_recipes.report.logs import megatron_throughput, parse_log
from dsv3_recipes.report.metrics import warmup_steps


def wall_clock(result_path: Path, recipe: Recipe) -> dict[str, object]:
    """A result's row by Megatron's clock; ``recipe`` is the one it ran (``cli.recipe_of_command``)."""
    result = json.loads(result_path.read_text())
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
        # The project's FLOPs per token at Megatron's tokens/s (the planner's MFU before its step-time model).
        "mfu_by_megatron_clock": result["mfu"] / ratio,
    }
