"""`dsv3 convert ...` and run_conversion.sh on the launch side: bad input refused before anything is
submitted, and dry runs that render the torchrun command or the sbatch script of the right size."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_conversion_checks import CONFIG, write_checkpoint

from dsv3_recipes.cli import main

REPO = Path(__file__).resolve().parents[1]
SLURM = ["--executor", "slurm", "--account", "acct", "--container-image", "nvcr.io/team/dsv3:1"]


@pytest.fixture(autouse=True)
def empty_stdin(monkeypatch):
    """NeMo-Run's Slurm dry run runs a local command through invoke, which reads stdin: pytest's
    captured stdin refuses reads, an empty one does not."""
    monkeypatch.setattr(sys, "stdin", io.StringIO())


def convert(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["convert", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_import_dry_run_renders_torchrun_with_one_process_per_rank(tmp_path, capsys):
    write_checkpoint(tmp_path / "hf")
    code, out, err = convert(
        capsys, "import", "--hf-path", str(tmp_path / "hf"), "--megatron-path", str(tmp_path / "mg"),
        "--tp", "2", "--ep", "4", "--dryrun",
    )  # fmt: skip
    assert code == 0
    call = f"import_hf(hf_path='{tmp_path / 'hf'}',megatron_path='{tmp_path / 'mg'}',tp=2,pp=1,ep=4)"
    assert call in "".join(err.split())  # the task on stderr: stdout is exactly the launch
    assert "torchrun" in out and "--nproc-per-node 4" in out
    assert not (tmp_path / "mg").exists()


def test_export_dry_run_on_slurm_sizes_the_job(capsys):
    code, out, _ = convert(
        capsys, "export", "--megatron-path", "/ckpt/mg", "--hf-path", "/ckpt/hf-out",
        "--hf-reference", "/ckpt/hf", "--tp", "2", "--ep", "64", "--gpus-per-node", "4",
        "--container-mounts", "/lustre:/ckpt", "--dryrun", *SLURM,
    )  # fmt: skip
    assert code == 0
    for line in ("#SBATCH --nodes=16", "#SBATCH --ntasks-per-node=4", "#SBATCH --account=acct"):
        assert line in out
    assert "--container-image nvcr.io/team/dsv3:1" in out and "/lustre:/ckpt" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tp", "3"], "--tp: 4 attention heads do not split into 3 equal parts; allowed: 1, 2, 4"),
        (["--executor", "slurm", "--container-image", "x/y:1"], "--account: Slurm needs an account"),
        (
            ["--ep", "4", "--gpus-per-node", "3", *SLURM],
            "--gpus-per-node: 4 ranks do not fill nodes of 3 GPUs",
        ),
    ],
)
def test_bad_layouts_and_executors_are_refused(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.delenv("SBATCH_ACCOUNT", raising=False)
    write_checkpoint(tmp_path / "hf")
    code, out, err = convert(
        capsys,
        "import",
        "--hf-path",
        str(tmp_path / "hf"),
        "--megatron-path",
        str(tmp_path / "mg"),
        "--dryrun",
        *argv,
    )
    assert (code, out) == (2, "")
    assert err.startswith(f"dsv3: error: {message}")


def test_local_conversion_needs_its_gpus_here(tmp_path, capsys, monkeypatch):
    """The same machine check as `dsv3 pretrain`: the conversion's ranks, or a pointer to --dryrun."""
    from dsv3_recipes.launch import local_gpus

    monkeypatch.setattr(local_gpus, "count", lambda: 2)
    write_checkpoint(tmp_path / "hf")
    argv = ["import", "--hf-path", str(tmp_path / "hf"), "--megatron-path", str(tmp_path / "mg"), "--ep", "4"]
    code, out, err = convert(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.startswith("dsv3: error: --tp/--pp/--ep: the conversion (PP x lcm(TP, EP)) needs 4 GPU(s)")
    assert "this machine has 2; use --dryrun" in err


def test_bad_paths_are_refused(tmp_path, capsys):
    write_checkpoint(tmp_path / "llama", config=CONFIG | {"model_type": "llama"})
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "data").write_text("x")
    write_checkpoint(tmp_path / "hf")
    cases = [
        (["import", "--hf-path", str(tmp_path / "llama"), "--megatron-path", str(tmp_path / "mg")],
         "--hf-path: ", "is not a DeepSeek-V3 checkpoint"),
        (["import", "--hf-path", str(tmp_path / "hf"), "--megatron-path", str(tmp_path / "full")],
         "--megatron-path: ", "already exists and is not an empty directory"),
        (["export", "--megatron-path", str(tmp_path / "hf"), "--hf-path", str(tmp_path / "o"),
          "--hf-reference", str(tmp_path / "hf")],
         "--megatron-path: ", "is not a Megatron-Bridge torch_dist checkpoint"),
        (["import", "--hf-path", "relative/hf", "--megatron-path", "/ckpt/mg", *SLURM],
         "--hf-path: ", "relative/hf must be an absolute path"),
    ]  # fmt: skip
    for argv, arg, problem in cases:
        code, _, err = convert(capsys, *argv, "--dryrun")
        assert code == 2 and err.startswith(f"dsv3: error: {arg}") and problem in err, err


def _run_conversion(env: dict[str, str]) -> subprocess.CompletedProcess:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("SBATCH_", "RUN_CONF_"))}
    return subprocess.run(
        ["bash", str(REPO / "conversion" / "run_conversion.sh"), "--dryrun"],
        env=keep | {"PYTHON": sys.executable} | env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_run_conversion_sh_renders_the_slurm_job_from_the_environment(tmp_path):
    env = {
        "HF_CKPT": "/lustre/deepseekv3_checkpoint_bf16",
        "MEGATRON_CKPT": "/lustre/deepseekv3_megatron",
        "TP": "2",
        "EP": "64",
        "GPUS_PER_NODE": "4",
        "SBATCH_ACCOUNT": "mlperf",
        "SBATCH_PARTITION": "gb200",
        "RUN_CONF_IMAGE": "registry.example.com/team/dsv3-recipes:gb200-0.1.0",
        "RUN_CONF_MOUNTS": "/lustre:/lustre",
        "WALLTIME": "01:30:00",
    }
    result = _run_conversion(env)
    assert result.returncode == 0, result.stderr
    for line in ("#SBATCH --nodes=16", "#SBATCH --partition=gb200", "#SBATCH --time=01:30:00"):
        assert line in result.stdout
    assert result.stdout.startswith("#!/bin/bash")  # exactly the sbatch script: the task is on stderr
    assert "megatron_path='/lustre/deepseekv3_megatron'" in result.stderr
    assert "tp=2" in result.stderr and "ep=64" in result.stderr

    missing = _run_conversion({k: v for k, v in env.items() if k != "HF_CKPT"})
    assert missing.returncode != 0 and "set HF_CKPT" in missing.stderr


def test_launch_side_runs_without_the_train_stack(tmp_path, on_login_node):
    """With torch, megatron, TE and transformers unimportable (a login node), a dry run still works."""
    write_checkpoint(tmp_path / "hf")
    out = on_login_node(f"""
from dsv3_recipes.cli import main
sys.exit(main(["convert", "import", "--hf-path", "{tmp_path / "hf"}", "--megatron-path", "{tmp_path / "mg"}",
              "--dryrun"]))
""")
    assert out.returncode == 0, out.stderr
    assert "import_hf(" in out.stderr and "torchrun" in out.stdout
