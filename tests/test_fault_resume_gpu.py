"""On a GPU: a run killed by SIGKILL after its checkpoint resumes bit-identically in deterministic mode
and within the run-to-run band by default (benchmarks/fault_resume.py; results under benchmarks/)."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("megatron.bridge", reason="needs the train extra (uv sync --extra train)")


@pytest.mark.gpu
def test_killed_run_resumes(tmp_path):
    command = [
        sys.executable, "benchmarks/fault_resume.py", "--cases", "deterministic", "default",
        "--results-dir", str(tmp_path), "--work", str(tmp_path / "work"),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, check=False, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    (result,) = tmp_path.glob("*-resume.json")
    data = json.loads(result.read_text())
    assert data["deterministic"]["max_abs_loss_diff"] == 0.0
    assert data["default"]["resumed_from_iteration"] == 4
