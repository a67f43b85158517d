"""This machine's GPUs come from one nvidia-smi query (the launch side has no torch)."""

import os
import stat

from dsv3_recipes.launch import local_gpus


def fake_nvidia_smi(tmp_path, monkeypatch, stdout: str, code: int = 0) -> None:
    tool = tmp_path / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\nprintf '{stdout}'\nexit {code}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}/usr/bin:/bin")


def test_two_gpus_are_counted_and_described(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, "NVIDIA H200, 580.65.06\\nNVIDIA H200, 580.65.06\\n")
    assert local_gpus.count() == 2
    assert local_gpus.describe() == "2 x NVIDIA H200 (driver 580.65.06)"


def test_a_failing_or_missing_nvidia_smi_means_no_gpu(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, "NVIDIA-SMI has failed\\n", code=9)
    assert local_gpus.query() == []
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert local_gpus.count() == 0
    assert local_gpus.describe() == "unknown (nvidia-smi listed no GPU)"


def test_the_host_cpu_is_named_by_its_model_and_count():
    cpuinfo = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n\nprocessor\t: 1\n"
    cpuinfo += "model name\t: Intel(R) Xeon(R) Platinum 8480+\n"
    assert local_gpus.host_cpu(cpuinfo) == "2 x Intel(R) Xeon(R) Platinum 8480+"
    assert local_gpus.host_cpu("flags: fpu\n") == f"{os.cpu_count()} x unknown"  # no model line (ARM)


def test_the_gpu_type_is_the_longest_hardware_name_the_gpu_name_holds():
    def of(name: str) -> str | None:
        return local_gpus.gpu_type([local_gpus.Gpu(name, "580.65.06")])

    assert of("NVIDIA H200") == "h200"
    assert of("NVIDIA H100 80GB HBM3") == "h100"
    assert of("NVIDIA GB200") == "gb200"  # not b200, which its name also holds
    assert of("NVIDIA A100-SXM4-80GB") is None
    assert local_gpus.gpu_type([]) is None
