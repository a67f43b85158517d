"""benchmarks/calibrate.py measures in worker processes: a case that leaves GPU memory behind (a failed
case's tensors stay referenced; on 2026-12-06 every case after the first out-of-memory failed) hands
the keys left to a fresh worker, and a worker that dies costs only the case it died in."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

from conftest import load_script

ROOT = Path(__file__).resolve().parent.parent
calibrate_script = load_script("benchmarks/calibrate.py", "calibrate_script")

# Stands in for `calibrate.py --worker`: "oom" runs out of memory (behind an earlier case: measured
# again in a fresh worker; first in its worker: a real failure), "leak" is measured but leaves memory
# behind, "die" kills its worker before it is recorded, "slow" outlasts any budget; every other key is
# measured.
FAKE_WORKER = """
import argparse, json, os, time
p = argparse.ArgumentParser()
p.add_argument("--out"); p.add_argument("--keys", nargs="*"); p.add_argument("--budget")
args, _ = p.parse_known_args()
result = {"cases": {}, "skipped": {}, "failed": {}, "left": [], "optimizer": {"pid": os.getpid()}}
def save():
    open(args.out, "w").write(json.dumps(result))
for index, key in enumerate(args.keys):
    if key == "die":
        os._exit(3)
    if key == "slow":
        time.sleep(60)
    if key == "oom" and index > 0:
        result["left"] = args.keys[index:]
        break
    if key == "oom":
        result["failed"][key] = {"error": "OutOfMemoryError"}
    else:
        result["cases"][key] = {"measured_by": os.getpid()}
    if key == "leak":
        result["left"] = args.keys[index + 1:]
        break
    save()
save()
"""


def test_a_case_that_holds_memory_hands_the_rest_to_a_fresh_worker_and_a_dead_worker_costs_one_case(
    tmp_path,
):
    worker = tmp_path / "worker.py"
    worker.write_text(FAKE_WORKER)
    keys = ["a", "oom", "b", "die", "c", "leak", "d"]
    cases = {k: (SimpleNamespace(label=f"label {k}"), [f"recipe {k}"]) for k in keys}
    out = tmp_path / "cal.json"
    args = SimpleNamespace(out=str(out), budget=100.0, skip=[], commit="abc")

    result = calibrate_script.drive(args, cases, [sys.executable, str(worker)])

    assert sorted(result["cases"]) == ["a", "b", "c", "d", "leak"]
    assert result["failed"]["oom"]["error"] == "OutOfMemoryError"  # first in its worker: a real failure
    assert result["failed"]["die"]["error"] == "its worker died"
    assert result["processes"] == 4
    by = {k: result["cases"][k]["measured_by"] for k in result["cases"]}
    assert by["a"] != by["b"] != by["c"] != by["d"] and by["c"] == by["leak"]
    assert json.loads(out.read_text())["cases"].keys() == result["cases"].keys()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal.json", "worker.py"]  # no worker files left


def test_a_case_that_outruns_the_budget_is_ended_there_and_the_rest_skipped(tmp_path):
    """The worker checks the budget between cases; the driver holds it to the budget within one too."""
    import time

    worker = tmp_path / "worker.py"
    worker.write_text(FAKE_WORKER)
    cases = {k: (SimpleNamespace(label=k), [k]) for k in ("a", "slow", "b")}
    args = SimpleNamespace(out=str(tmp_path / "cal.json"), budget=3.0, skip=[], commit="abc")
    start = time.perf_counter()
    result = calibrate_script.drive(args, cases, [sys.executable, str(worker)])
    assert time.perf_counter() - start < 30  # not the slow case's 60 s
    assert list(result["cases"]) == ["a"] and sorted(result["skipped"]) == ["b", "slow"]
    assert result["processes"] == 1 and not result["failed"]


def test_skipped_keys_reach_no_worker(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(FAKE_WORKER)
    cases = {k: (SimpleNamespace(label=k), [k]) for k in ("a", "b")}
    args = SimpleNamespace(out=str(tmp_path / "cal.json"), budget=100.0, skip=["a"], commit="abc")
    assert list(calibrate_script.drive(args, cases, [sys.executable, str(worker)])["cases"]) == ["b"]


def test_the_keys_left_retry_a_case_only_when_memory_held_before_it_made_it_fail():
    order = ["a", "b", "c"]
    assert calibrate_script.keys_left(order, 1, out_of_memory=True) == ["b", "c"]
    assert calibrate_script.keys_left(order, 0, out_of_memory=True) == ["b", "c"]  # its own failure
    assert calibrate_script.keys_left(order, 1, out_of_memory=False) == ["c"]  # measured, then leaked


def test_a_call_made_on_another_gpu_is_not_merged(tmp_path):
    """An H100 calibration (made when no H200 was lent) is a diagnostic: the planner scales every GPU
    from H200 measurements, so merging it would mislabel its times."""
    import subprocess

    call = tmp_path / "h100-call.json"
    call.write_text(json.dumps({"gpu": "h100", "cases": {}}))
    out = tmp_path / "merged.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "merge_calibration.py"), str(call), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().endswith("measured on h100, not h200: not merged")
    assert not out.exists()


def test_another_gpus_merge_goes_only_into_another_file(tmp_path):
    import subprocess

    script = str(ROOT / "benchmarks" / "merge_calibration.py")
    call = ROOT / "benchmarks" / "results" / "calibration" / "2026-12-06-h100-diagnostic.json"
    refused = subprocess.run(
        [sys.executable, script, str(call), "--gpu", "h100"], capture_output=True, text=True, check=False
    )
    assert refused.returncode == 2
    assert "the planner's file holds h200 measurements only" in refused.stderr
    out = tmp_path / "h100.json"
    merged = subprocess.run(
        [sys.executable, script, str(call), "--gpu", "h100", "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert merged.returncode == 0, merged.stderr
    data = json.loads(out.read_text())
    assert data["gpu"] == "h100" and len(data["cases"]) == 3
