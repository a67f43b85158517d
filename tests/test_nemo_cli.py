"""``nemo dsv3 pretrain --factory NAME recipe.k=v``: NeMo-Run's own CLI, with dsv3 pretrain's checks."""

import subprocess
import sys
from pathlib import Path

import pytest

NEMO = str(Path(sys.executable).parent / "nemo")


def nemo(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [NEMO, "dsv3", "pretrain", *args, "--dryrun", "-y"]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=240)


def test_a_recipe_and_its_override_dry_run_through_nemo_run(tmp_path):
    out = nemo("--factory", "proxy_1gpu", "recipe.train.train_iters=7", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Dry run for task dsv3_recipes.train.entry:pretrain" in out.stdout
    assert "train_iters=7" in out.stdout


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["--factory", "proxy_1gpu", "recipe.model.expert_model_parallel_size=3"],
            "pretrain: model.expert_model_parallel_size: 64 experts not divisible by EP=3",
        ),
        (
            ["--factory", "os.system"],
            "pretrain: --factory: 'os.system' is not a recipe; allowed: b200_bf16_256gpu, ",
        ),
    ],
)
def test_a_refusal_is_one_line_and_nothing_runs(tmp_path, args, line):
    out = nemo(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith(line)
    assert "Dry run" not in out.stdout and list(tmp_path.iterdir()) == []
