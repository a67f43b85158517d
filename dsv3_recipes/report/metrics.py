"""Per-step throughput metrics, computed the same way for live runs and for `dsv3 report`.

Model FLOPs come from the project's own formula (flops.model_flops_per_token), so TFLOPS/GPU and MFU
are comparable across recipes and GPUs; Megatron's own TFLOPS figure is logged beside them.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass

from dsv3_recipes.recipe.hardware import Gpu
from dsv3_recipes.recipe.schema import Recipe

METRICS_TAG = "DSV3_METRICS"
SUMMARY_TAG = "DSV3_SUMMARY"
# Steps left out of a run's throughput: compilation, allocator growth.
WARMUP_STEPS = 3


def warmup_steps(recipe: Recipe) -> int:
    """With CUDA graphs, also the step that captures them: Megatron does so at the start of the step
    after its ``cuda_graph_warmup_steps`` (3, its default; the recipe does not set it)."""
    return WARMUP_STEPS + (recipe.model.cuda_graph_impl != "none")


def profiled_steps(recipe: Recipe) -> frozenset[int]:
    """Steps (numbered as Megatron's iterations) that a profiler slows. Bridge's PyTorch profiler warms up
    in the step before ``profile_step_start``, records up to ``profile_step_end - 1`` and writes its
    trace during step ``profile_step_end``; nsys records ``profile_step_start + 1`` to
    ``profile_step_end``."""
    p = recipe.profiling
    if p.use_pytorch_profiler:
        return frozenset(range(p.profile_step_start - 1, p.profile_step_end + 1))
    if p.use_nsys_profiler:
        return frozenset(range(p.profile_step_start + 1, p.profile_step_end + 1))
    return frozenset()


@dataclass
class StepMetrics:
    step: int
    lm_loss: float | None
    step_time_s: float
    tokens_per_s_per_gpu: float
    model_tflops_per_gpu: float
    mfu: float
    mem_allocated_gib: float
    mem_reserved_gib: float
    # Tokens per expert in this step over every router (ExpertLoad.summary), written flat into the line.
    expert_load: dict[str, float] | None = None

    def to_line(self) -> str:
        values = asdict(self)
        values.update(values.pop("expert_load") or {})
        return f"{METRICS_TAG} {json.dumps(values)}"


def step_metrics(
    *,
    step: int,
    lm_loss: float | None,
    step_time_s: float,
    tokens_per_step: int,
    flops_per_token: float,
    world_size: int,
    gpu: Gpu,
    mem_allocated_bytes: int,
    mem_reserved_bytes: int,
    fp8: bool,
) -> StepMetrics:
    """Throughput of one optimizer step over all ranks; MFU against the dense BF16 (or FP8) peak."""
    tokens_per_s_per_gpu = tokens_per_step / step_time_s / world_size
    tflops = tokens_per_s_per_gpu * flops_per_token / 1e12
    peak = gpu.peak_fp8_tflops if fp8 else gpu.peak_bf16_tflops
    return StepMetrics(
        step=step,
        lm_loss=lm_loss,
        step_time_s=step_time_s,
        tokens_per_s_per_gpu=tokens_per_s_per_gpu,
        model_tflops_per_gpu=tflops,
        mfu=tflops / peak,
        mem_allocated_gib=mem_allocated_bytes / 2**30,
        mem_reserved_gib=mem_reserved_bytes / 2**30,
    )


TIMING = "total time of the steps after warm-up, each from the end of the one before (GC, logging included)"


def summarize(
    steps: list[StepMetrics], warmup_steps: int, left_out: frozenset[int] = frozenset()
) -> dict[str, float | int | str | list[int]]:
    """Throughput over the steps after warm-up (compilation, allocator growth, CUDA-graph capture) from
    their total time, not a median: a pause every few steps, such as Megatron's manual GC, costs a
    long run its share, and a median of 1-in-5 slow steps would hide it. Steps in ``left_out`` (the
    profiled ones) count for memory and loss only."""
    steady = [s for s in steps[warmup_steps:] if s.step not in left_out] or steps
    seconds = sum(s.step_time_s for s in steady)

    def per_second(value: str) -> float:  # a rate over the whole window, weighting each step by its time
        return sum(getattr(s, value) * s.step_time_s for s in steady) / seconds

    return {
        "steps": len(steps),
        "steady_steps": len(steady),
        "profiled_steps_left_out": sorted(left_out),
        "timing": TIMING,
        "step_time_s": seconds / len(steady),
        "step_time_s_median": statistics.median(s.step_time_s for s in steady),
        "tokens_per_s_per_gpu": per_second("tokens_per_s_per_gpu"),
        "model_tflops_per_gpu": per_second("model_tflops_per_gpu"),
        "mfu": per_second("mfu"),
        "peak_mem_allocated_gib": max(s.mem_allocated_gib for s in steps),
        "peak_mem_reserved_gib": max(s.mem_reserved_gib for s in steps),
        "first_lm_loss": steps[0].lm_loss,
        "last_lm_loss": steps[-1].lm_loss,
    }
