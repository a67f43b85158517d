"""tests/conftest.py's Slurm probe: the slurm tests skip, or with DSV3_REQUIRE_SLURM=1 fail, unless a
controller answers."""

import pytest
from conftest import slurm_problem


def _tools(tmp_path, monkeypatch, scontrol_output: str | None, rc: int = 0) -> None:
    (tmp_path / "sbatch").write_text("#!/bin/sh\nexit 0\n")
    tools = ["sbatch"]
    if scontrol_output is not None:
        (tmp_path / "scontrol").write_text(f"#!/bin/sh\necho '{scontrol_output}'\nexit {rc}\n")
        tools.append("scontrol")
    for tool in tools:
        (tmp_path / tool).chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))


def test_no_sbatch(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert slurm_problem() == "no sbatch on PATH"


@pytest.mark.parametrize(
    ("output", "rc", "problem"),
    [
        ("Slurmctld(primary) at host is UP", 0, None),
        ("Slurmctld(primary) at host is DOWN", 1, "slurmctld does not answer"),
        (None, 0, "scontrol ping failed"),
    ],
)
def test_a_controller_must_answer(tmp_path, monkeypatch, output, rc, problem):
    _tools(tmp_path, monkeypatch, output, rc)
    found = slurm_problem()
    assert found == problem if problem is None else found.startswith(problem)
