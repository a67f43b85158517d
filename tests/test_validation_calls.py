"""Each door validates a recipe once: counted by benchmarks/validation_calls.py (sys.monitoring on
validate, plan and check_types) in a fresh interpreter per command."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "validation_calls.py"
NOTEBOOK = "notebook: run.run(recipes.get('proxy_1gpu'), executor=run.LocalExecutor(), dryrun=True)"


def calls(*argv: str) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--one", *argv],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.parametrize(
    "argv, validations, plans",
    [
        (["show", "proxy_1gpu", "--json"], 1, 0),
        (["plan", "proxy_1gpu"], 1, 1),
        (["pretrain", "-f", "proxy_1gpu", "--dryrun"], 1, 1),
        ([NOTEBOOK], 1, 1),
    ],
)
def test_each_door_validates_once(argv, validations, plans, tmp_path, monkeypatch):
    monkeypatch.setenv("NEMORUN_HOME", str(tmp_path))
    counted = calls(*argv)
    assert (counted["validate"], counted["plan"]) == (validations, plans)
    # One build (each section checks its own types, the recipe its own fields) and one validate; a plan
    # whose stand-in is not measured (proxy_1gpu's since the grouped GEMM) also checks that model once.
    assert counted["check_types"] <= 2 * 14 + plans
