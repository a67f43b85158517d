"""The GPUs of this machine, asked of nvidia-smi once per call: the launch side has no torch.

The local launch check counts them, and the benchmarks' records name them and the CPU that feeds them
(a host-bound step's time follows the CPU: the same H200 ran the shrunk checks 1.6x apart on two lent
machines)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess

from dsv3_recipes.recipe import hardware


@dataclasses.dataclass(frozen=True)
class Gpu:
    name: str
    driver: str


def query() -> list[Gpu]:
    """Every GPU nvidia-smi lists; none where it is missing or fails (a CPU machine)."""
    if shutil.which("nvidia-smi") is None:
        return []
    ask = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]
    out = subprocess.run(ask, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return []
    rows = (line.rsplit(",", 1) for line in out.stdout.splitlines() if "," in line)
    return [Gpu(name.strip(), driver.strip()) for name, driver in rows]


def count() -> int:
    return len(query())


def describe(gpus: list[Gpu] | None = None) -> str:
    """``N x <name> (driver D)`` for a result's ``machine`` field."""
    gpus = query() if gpus is None else gpus
    if not gpus:
        return "unknown (nvidia-smi listed no GPU)"
    return f"{len(gpus)} x {gpus[0].name} (driver {gpus[0].driver})"


def gpu_type(gpus: list[Gpu] | None = None) -> str | None:
    """The hardware table's name of this machine's first GPU (``NVIDIA H200`` -> ``h200``, the longest
    that its name holds: ``NVIDIA GB200`` is ``gb200``, not ``b200``); None for none or another GPU."""
    gpus = query() if gpus is None else gpus
    name = gpus[0].name.lower() if gpus else ""
    return max((t for t in hardware.GPUS if t in name), key=len, default=None)


def host_cpu(cpuinfo: str | None = None) -> str:
    """``N x <model name>`` of this machine's logical CPUs, from /proc/cpuinfo (``cpuinfo`` in tests)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                cpuinfo = f.read()
        except OSError:
            return f"{os.cpu_count()} x unknown"
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    return f"{len(models) or os.cpu_count()} x {models[0] if models else 'unknown'}"
