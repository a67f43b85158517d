"""GPU facts the planner and the metrics use: dense peak TFLOPS, memory, GPUs per node."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    name: str
    peak_bf16_tflops: float
    peak_fp8_tflops: float
    memory_gib: float  # usable HBM as the driver reports it
    gpus_per_node: int
    supports_mxfp8: bool  # Blackwell tensor cores; Hopper has blockwise/tensorwise FP8 only


# Peaks for H100, B200 and GB200 are the TorchTitan DSV3 recipe's table ([titan-dsv3]); H200 shares the
# H100's tensor cores; GB300's are NVIDIA's GB300 NVL72 datasheet (dense, per GPU).
GPUS: dict[str, Gpu] = {
    "h100": Gpu("h100", 989.0, 1979.0, 79.6, 8, False),
    "h200": Gpu("h200", 989.0, 1979.0, 139.8, 8, False),
    "b200": Gpu("b200", 2250.0, 4500.0, 178.4, 8, True),
    "gb200": Gpu("gb200", 2450.0, 4900.0, 184.0, 4, True),
    "gb300": Gpu("gb300", 2500.0, 5000.0, 268.0, 4, True),
}


def gpu(name: str) -> Gpu:
    """Look up a GPU type; unknown names fail with the allowed list."""
    try:
        return GPUS[name]
    except KeyError:
        raise ValueError(f"unknown GPU type {name!r}; allowed: {', '.join(GPUS)}") from None


def detect(device_name: str) -> Gpu:
    """Map a CUDA device name ("NVIDIA H100 80GB HBM3", "NVIDIA GB200") to its table entry."""
    upper = device_name.upper()
    for name in sorted(GPUS, key=len, reverse=True):  # "GB200" before "B200"
        if name.upper() in upper:
            return GPUS[name]
    raise ValueError(f"no peak-TFLOPS entry for GPU {device_name!r}; known: {', '.join(GPUS)}")
