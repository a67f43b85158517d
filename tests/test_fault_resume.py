"""benchmarks/fault_resume.py: the kill reaches every process of the job, and the logs are read back.
The GPU run itself is tests/test_fault_resume_gpu.py (results under benchmarks/results/)."""

import json
import re
import sys
import textwrap
import time

from benchmarks import fault_resume

TRAINER = textwrap.dedent(
    """
    import json, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print("CHILD", child.pid, flush=True)
    for step in range(1, 9):
        print("DSV3_METRICS " + json.dumps({"step": step, "lm_loss": 10.0 - step}), flush=True)
        if step == 4:
            print("  successfully saved checkpoint from iteration       4 to /ckpt", flush=True)
            time.sleep(30)
    """
)


def test_sigkill_reaches_the_whole_job_after_the_checkpoint_line(tmp_path):
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    start = time.perf_counter()
    run = fault_resume.launch([sys.executable, str(script)], tmp_path / "run.log", fault_resume.SAVED)
    assert time.perf_counter() - start < 20, "the kill must not wait for the job"
    assert run.returncode == -9 and run.killed_at_s is not None
    assert sorted(run.rows) == [1, 2, 3, 4] and run.rows[4]["lm_loss"] == 6.0
    child = int(re.search(r"CHILD (\d+)", (tmp_path / "run.log").read_text()).group(1))
    time.sleep(0.2)
    assert _dead(child), "the grandchild must die with the job"


def _dead(pid: int) -> bool:
    """Gone, or a zombie waiting for a reaper: /proc/PID/stat's state is Z."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_resumed_iteration_and_band_arithmetic(tmp_path):
    script = tmp_path / "resumed.py"
    script.write_text(
        "print('  successfully loaded checkpoint from /c [ t 0/1, p 0/1 ] at iteration 4')\n"
        'print(\'DSV3_METRICS {"step": 5, "lm_loss": 5.5}\')\n'
    )
    run = fault_resume.launch([sys.executable, str(script)], tmp_path / "r.log")
    assert run.resumed_from == 4 and run.returncode == 0 and run.killed_at_s is None
    assert fault_resume.max_abs_diff([1.0, 2.5], [1.25, 2.0]) == 0.5
    assert fault_resume.max_abs_diff([1.0, None], [1.0, 2.0]) is None


def test_every_case_is_compared_with_a_reference_of_its_own_mode():
    refs = {name: fault_resume.reference(case) for name, case in fault_resume.CASES.items()}
    assert refs["async"] == refs["default"] == refs["save_kill"]  # async only changes how it saves
    assert refs["deterministic"][2] == tuple(fault_resume.DETERMINISTIC)
    assert refs["mlperf"][1] == "mlperf_proxy_1gpu"


def test_cases_are_judged_from_their_launches(monkeypatch, tmp_path):
    """run_cases with stand-in launches: a resume that matches passes, one that drifts fails."""

    launched = []

    def fake(command, log, kill_on=None):
        text = " ".join(command)
        launched.append(text)
        for arg in command:
            if arg.startswith("checkpoint.save="):
                (tmp_path / arg.split("=", 1)[1] / "iter_0000004").mkdir(parents=True, exist_ok=True)
        resumed = "checkpoint.load" in text and kill_on is None and "ref-" not in text
        extended = "train.train_iters=12" in text
        first = 9 if extended else (5 if resumed else 1)
        last = 12 if extended else 8
        drift = 0.5 if "save_kill" in text and resumed else 0.0
        rows = {s: {"lm_loss": 10.0 - s + drift, "learning_rate": 1e-4 * s} for s in range(first, last + 1)}
        run = fault_resume.Launch(command, returncode=0, rows=rows)
        run.resumed_from = (8 if extended else 4) if resumed or extended else None
        run.killed_at_s = 1.0 if kill_on is not None else None
        run.returncode = -9 if kill_on is not None else 0
        return run

    monkeypatch.setattr(fault_resume, "launch", fake)
    partial = tmp_path / "progress.json"
    results = fault_resume.run_cases(fault_resume.CHOICES, tmp_path, partial=partial)
    assert results["band_default_mode"] == 0.0
    assert results["deterministic"]["passed"] and results["default"]["passed"]
    assert results["mlperf"]["passed"] and results["extend"]["passed"]
    assert not results["save_kill"]["passed"] and results["save_kill"]["max_abs_loss_diff"] == 0.5
    # The references only give losses: they save nothing, and each chain deletes its checkpoints.
    assert all("checkpoint.save=" not in t for t in launched if "/ref-" in t)
    assert not list(tmp_path.rglob("iter_0000004"))
    # What finished is on disk as it finishes: every launch, with how it ended.
    progress = json.loads(partial.read_text())
    assert len(progress) == len(launched) and progress["deterministic#0"]["killed_at_s"] == 1.0
    assert progress["deterministic#1"]["resumed_from_iteration"] == 4


def test_every_launch_of_the_script_passes_the_launch_checks(tmp_path, capsys):
    """What the GPU run will launch is planned and checked here first (a dry run of each command)."""
    from dsv3_recipes.cli import main

    for case in fault_resume.CASES.values():
        key, recipe, overrides = fault_resume.reference(case)
        first = fault_resume.command(case.recipe, case.overrides, tmp_path, case.name, resume=False)
        for command in (
            first,
            fault_resume.command(recipe, list(overrides), tmp_path, key, resume=False, save=False),
        ):
            assert main([*command[3:], "--dryrun"]) == 0, capsys.readouterr().err
    extend = fault_resume.command("proxy_1gpu", fault_resume.EXTEND, tmp_path, "extend", resume=False)
    assert main([*extend[3:], "--dryrun"]) == 0, capsys.readouterr().err
