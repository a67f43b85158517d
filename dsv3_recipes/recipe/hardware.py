"""GPU facts the planner and the metrics use: dense peak TFLOPS, memory and its bandwidth, GPUs per
node, and the links between GPUs (the step-time model scales measured costs and prices transfers with
them)."""

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
    hbm_tb_s: float  # memory bandwidth
    nvlink_gb_s: float  # NVLink bandwidth per GPU and direction (half the datasheet's bidirectional figure)
    nvlink_domain_gpus: int  # GPUs one NVLink domain joins (an HGX board, an NVL72 rack)
    network_gb_s: float  # scale-out bandwidth per GPU and direction (its NIC's line rate)


# Peaks for H100, B200 and GB200 are the TorchTitan DSV3 recipe's table ([titan-dsv3]); H200 shares the
# H100's tensor cores; GB300's are NVIDIA's GB300 NVL72 datasheet (dense, per GPU). Bandwidths are the
# datasheets' ([nv-h100], [nv-h200], [nv-dgx-b200], [nv-gb200-nvl72], [nv-gb300-nvl72]): HBM3 3.35 TB/s
# (H100 SXM), HBM3e 4.8 TB/s (H200) and 8 TB/s (Blackwell); NVLink 4 900 GB/s and NVLink 5 1.8 TB/s
# bidirectional per GPU; one 400 Gb/s ConnectX-7 per GPU (DGX H100/H200/B200, GB200 NVL72 compute
# trays), one 800 Gb/s ConnectX-8 per GPU on GB300 NVL72.
GPUS: dict[str, Gpu] = {
    "h100": Gpu("h100", 989.0, 1979.0, 79.6, 8, False, 3.35, 450.0, 8, 50.0),
    "h200": Gpu("h200", 989.0, 1979.0, 139.8, 8, False, 4.8, 450.0, 8, 50.0),
    "b200": Gpu("b200", 2250.0, 4500.0, 178.4, 8, True, 8.0, 900.0, 8, 50.0),
    "gb200": Gpu("gb200", 2450.0, 4900.0, 184.0, 4, True, 8.0, 900.0, 72, 50.0),
    "gb300": Gpu("gb300", 2500.0, 5000.0, 268.0, 4, True, 8.0, 900.0, 72, 100.0),
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
