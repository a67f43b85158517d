"""Shared fixtures. GPU tests (`@pytest.mark.gpu`) skip unless CUDA and the train side are present;
Slurm tests (`@pytest.mark.slurm`) skip unless `sbatch` is on PATH and slurmctld answers
(tests/slurm/cluster.sh starts one); with DSV3_REQUIRE_SLURM=1 (set by .ci/run) a missing cluster is an
error instead, so that CI cannot pass without running them."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _cuda_available() -> bool:
    if shutil.which("nvidia-smi") is None or importlib.util.find_spec("torch") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True, check=False).returncode == 0


@pytest.fixture(autouse=True)
def no_stdin(monkeypatch):
    """NeMo-Run's Slurm dry run shells out through invoke, which reads stdin; a CI run has none."""
    with open(os.devnull) as devnull:
        monkeypatch.setattr(sys, "stdin", devnull)
        yield


# A login node has no train stack: these imports fail in a script run by `on_login_node`.
TRAIN_STACK = ("torch", "megatron", "transformer_engine", "transformers")
LOGIN_NODE = f"""
import sys
class LoginNode:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {TRAIN_STACK!r}:
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, LoginNode())
"""


def load_script(relative_path: str, name: str) -> ModuleType:
    """A script that is not part of the package (benchmarks/*.py), loaded in this process under `name`."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relative_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def on_login_node():
    """Run a Python script in a fresh interpreter that cannot import the train stack."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = os.environ | {"PYTHONPATH": path}

    def run(script: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-c", LOGIN_NODE + script]
        return subprocess.run(command, env=env, capture_output=True, text=True, check=False)

    return run


def slurm_problem() -> str | None:
    """Why the Slurm tests cannot run on this machine, or None."""
    if shutil.which("sbatch") is None:
        return "no sbatch on PATH"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"scontrol ping failed ({e})"
    if ping.returncode != 0 or " is UP" not in ping.stdout:
        said = (ping.stdout + ping.stderr).strip().splitlines()
        return f"slurmctld does not answer `scontrol ping` ({said[0][:160] if said else 'no output'})"
    return None


def pytest_collection_modifyitems(config, items):
    skips = {}
    if not _cuda_available():
        skips["gpu"] = pytest.mark.skip(reason="needs a CUDA GPU (results recorded under benchmarks/)")
    if any("slurm" in item.keywords for item in items) and (problem := slurm_problem()):
        if os.environ.get("DSV3_REQUIRE_SLURM") == "1":
            raise pytest.UsageError(f"DSV3_REQUIRE_SLURM=1 but {problem}: tests/slurm/cluster.sh start")
        skips["slurm"] = pytest.mark.skip(reason=f"{problem}: sudo tests/slurm/cluster.sh start")
    for item in items:
        for marker, skip in skips.items():
            if marker in item.keywords:
                item.add_marker(skip)
