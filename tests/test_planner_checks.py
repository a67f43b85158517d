"""benchmarks/planner_checks.sh's calls, parsed by run_recipe.py's own command line (CPU).

On a lent H100 (2026-12-06) the script passed ``--steps`` to the shrunk runs, which run_recipe.py refuses:
half of a device call's checks were lost. A stand-in run_recipe.py here parses each call with the real
``arguments`` and records it, so a call the real one would refuse fails this test instead.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

STUB = r"""
import json, pathlib, sys
sys.path.insert(0, {benchmarks!r})
from run_recipe import arguments  # the real command line: it exits 2 on a call it refuses
a = arguments(sys.argv[1:])
pathlib.Path(a.results_dir, a.label + ".json").write_text(json.dumps(vars(a)))
"""


def _checks(tmp_path, env: dict[str, str]) -> dict[str, dict]:
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "planner_checks.sh").write_text(
        (ROOT / "benchmarks" / "planner_checks.sh").read_text()
    )
    (tmp_path / "benchmarks" / "run_recipe.py").write_text(STUB.format(benchmarks=str(ROOT / "benchmarks")))
    (tmp_path / "bin").mkdir()
    python3 = tmp_path / "bin" / "python3"  # this interpreter, its venv included (a symlink loses it)
    python3.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python3.chmod(0o755)
    work = tmp_path / "work"
    done = subprocess.run(
        ["bash", "benchmarks/planner_checks.sh", str(tmp_path / "out")],
        cwd=tmp_path,
        env={
            **os.environ,
            **env,
            "WORK": str(work),
            "PYTHONPATH": str(ROOT),
            "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "failed" not in done.stdout, done.stdout[-2000:]
    (results,) = work.glob("run-*/results")
    return {p.stem: json.loads(p.read_text()) for p in results.glob("*.json")}


@pytest.mark.parametrize("profile", ["0", "1"])
def test_every_check_is_a_call_run_recipe_takes_and_profiles_a_step_it_runs(tmp_path, profile):
    runs = _checks(tmp_path, {"PROFILE": profile, "STEPS": "20", "GPU_TYPE": "h100"})
    assert set(runs) == {
        "proxy_mtp",
        "proxy_nomtp",
        "h100_fp8_blockwise_shrunk1",
        "bridge_default_1024gpu_shrunk1",
    }
    for label, a in runs.items():
        steps = 10 if a["shrink"] else a["steps"]  # a shrunk run takes the shrink's 10
        assert (a["shrink"], a["steps"]) == ((1, None) if label.endswith("shrunk1") else (None, 20))
        assert "launch.gpu_type=h100" in a["overrides"]
        profiling = {o.split("=")[0]: o.split("=")[1] for o in a["overrides"] if o.startswith("profiling.")}
        if profile == "1":  # the second-last step, so that the median keeps the steps before its warm-up
            assert profiling == {
                "profiling.use_pytorch_profiler": "True",
                "profiling.profile_step_start": str(steps - 1),
                "profiling.profile_step_end": str(steps),
            }
        else:
            assert profiling == {}
