"""Per-step throughput metrics, computed the same way for live runs and for `dsv3 report`.

Model FLOPs come from the project's own formula (flops.model_flops_per_token), so TFLOPS/GPU and MFU
are comparable across recipes and GPUs; Megatron's own TFLOPS figure is logged beside them.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass

from dsv3_recipes.hardware import Gpu

METRICS_TAG = "DSV3_METRICS"
SUMMARY_TAG = "DSV3_SUMMARY"


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

    def to_line(self) -> str:
        return f"{METRICS_TAG} {json.dumps(asdict(self))}"


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


def summarize(steps: list[StepMetrics], warmup_steps: int) -> dict[str, float | int]:
    """Medians over the steps after warm-up (compilation, allocator growth and CUDA-graph capture)."""
    steady = steps[warmup_steps:] or steps
    return {
        "steps": len(steps),
        "steady_steps": len(steady),
        "step_time_s": statistics.median(s.step_time_s for s in steady),
        "tokens_per_s_per_gpu": statistics.median(s.tokens_per_s_per_gpu for s in steady),
        "model_tflops_per_gpu": statistics.median(s.model_tflops_per_gpu for s in steady),
        "mfu": statistics.median(s.mfu for s in steady),
        "peak_mem_allocated_gib": max(s.mem_allocated_gib for s in steps),
        "peak_mem_reserved_gib": max(s.mem_reserved_gib for s in steps),
        "first_lm_loss": steps[0].lm_loss,
        "last_lm_loss": steps[-1].lm_loss,
    }
