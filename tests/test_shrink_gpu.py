"""On a GPU: a shrunk 671B recipe trains through `dsv3 pretrain --shrink 1`, and the train entry stops an
FP8 recipe the GPU cannot run in one line. All nine recipes: benchmarks/shrunk_runs.sh (results/)."""

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.bridge", reason="needs the train extra (uv sync --extra train)")

from dsv3_recipes.recipe import hardware  # noqa: E402
from dsv3_recipes.report.logs import parse_log  # noqa: E402


def _dsv3(*args):
    command = [sys.executable, "-m", "dsv3_recipes.cli", "pretrain", *args]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)


@pytest.mark.gpu
def test_shrunk_h100_fp8_blockwise_trains_with_falling_loss(tmp_path):
    here = hardware.detect(torch.cuda.get_device_name()).name
    proc = _dsv3(
        "-f", "h100_fp8_blockwise", "--shrink", "1", f"launch.gpu_type={here}", f"output_dir={tmp_path}"
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = parse_log(proc.stdout + proc.stderr).rows()
    assert len(rows) == 10 and rows[-1]["lm_loss"] < rows[0]["lm_loss"]
    assert all("mtp_1_loss" in r for r in rows)


@pytest.mark.gpu
def test_mxfp8_on_hopper_stops_at_the_train_entry(tmp_path):
    if torch.cuda.get_device_capability()[0] >= 10:
        pytest.skip("this GPU runs MXFP8")
    proc = _dsv3("-f", "gb200_mxfp8_256gpu", "--shrink", "1", f"output_dir={tmp_path}")
    log = proc.stdout + proc.stderr
    assert "dsv3: error: mixed_precision.fp8_recipe: 'mxfp8' does not run on this GPU" in log
    assert not parse_log(log).steps
