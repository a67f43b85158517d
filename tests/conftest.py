"""Shared fixtures. GPU tests (`@pytest.mark.gpu`) skip unless CUDA and the train side are present;
Slurm tests (`@pytest.mark.slurm`) skip unless `sbatch` is on PATH (tests/slurm/cluster.sh starts one)."""

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest


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


@pytest.fixture
def on_login_node():
    """Run a Python script in a fresh interpreter that cannot import the train stack."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}

    def run(script: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-c", LOGIN_NODE + script]
        return subprocess.run(command, env=env, capture_output=True, text=True, check=False)

    return run


def pytest_collection_modifyitems(config, items):
    skips = {}
    if not _cuda_available():
        skips["gpu"] = pytest.mark.skip(reason="needs a CUDA GPU (results recorded under benchmarks/)")
    if shutil.which("sbatch") is None:
        skips["slurm"] = pytest.mark.skip(reason="needs a Slurm cluster: sudo tests/slurm/cluster.sh start")
    for item in items:
        for marker, skip in skips.items():
            if marker in item.keywords:
                item.add_marker(skip)
