"""report/fault_resume.py (run by benchmarks/fault_resume.py): the kill reaches every process of the job,
and the logs are read back.
The GPU run itself is tests/test_fault_resume_gpu.py (results under benchmarks/results/)."""

import json
import re
import shlex
import sys
import textwrap
import time
from pathlib import Path

from dsv3_recipes.report import fault_resume

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
        log.write_text(f"$ {text}\n")
        ckpt = dict(arg.split("=", 1) for arg in command if arg.startswith("checkpoint."))
        # It resumes where an earlier launch of its chain saved; a first launch starts fresh.
        resumed = "checkpoint.load" in ckpt and any(Path(ckpt["checkpoint.load"]).glob("iter_*"))
        if "checkpoint.save" in ckpt:
            (Path(ckpt["checkpoint.save"]) / "iter_0000004").mkdir(parents=True, exist_ok=True)
        extended = "train.train_iters=12" in text
        first = 9 if extended else (5 if resumed else 1)
        # A kill after the iteration-4 save stops at step 4; save_kill's comes after step 8.
        last = 12 if extended else (4 if kill_on is fault_resume.SAVED else 8)
        drift = 0.5 if "save_kill" in text and resumed else 0.0
        rows = {s: {"lm_loss": 10.0 - s + drift, "learning_rate": 1e-4 * s} for s in range(first, last + 1)}
        run = fault_resume.Launch(command, returncode=0, rows=rows)
        run.resumed_from = (8 if extended else 4) if resumed else None
        run.killed_at_s = 1.0 if kill_on is not None else None
        run.returncode = -9 if kill_on is not None else 0
        return run

    monkeypatch.setattr(fault_resume, "launch", fake)
    out = tmp_path / "out"
    results = fault_resume.run_cases(fault_resume.CHOICES, tmp_path, out)
    # The band's runs: the two references, and the first launches that trained all 8 steps.
    assert results["band_runs"] == ["extend#0", "ref-band1#0", "ref-proxy_1gpu-plain#0", "save_kill#0"]
    assert results["band_default_mode"] == 0.0
    assert results["deterministic"]["passed"] and results["default"]["passed"]
    assert results["mlperf"]["passed"] and results["extend"]["passed"]
    assert not results["save_kill"]["passed"] and results["save_kill"]["max_abs_loss_diff"] == 0.5
    # save_kill's first launch logged step 5 before its kill: the relaunch's step 5 must equal it.
    assert results["save_kill"]["first_step_equals_killed_run"] is False
    assert results["default"]["first_step_equals_killed_run"] is None  # killed before step 5
    # The references only give losses: they save nothing, and each chain deletes its checkpoints.
    assert all("checkpoint.save=" not in t for t in launched if "/ref-" in t)
    assert not list(tmp_path.rglob("iter_0000004"))
    # What finished is on disk as it finishes: every launch, with how it ended.
    recorded = json.loads((out / "resume-progress.json").read_text())
    assert {k: recorded[k] for k in fault_resume.CONDITION} == fault_resume.CONDITION
    progress = recorded["launches"]
    assert len(progress) == len(launched) and progress["deterministic#0"]["killed_at_s"] == 1.0
    assert progress["deterministic#1"]["resumed_from_iteration"] == 4
    assert len(list((out / "logs").glob("*.log"))) == len(launched)


def test_band_references_make_up_four_uninterrupted_runs():
    """One pair of runs gives a band that a perfect resume exceeds twice over 16% of the time."""
    keys = lambda names: [key for key, _, _ in fault_resume.references(names)]  # noqa: E731
    assert keys(["default"]) == ["ref-proxy_1gpu-plain", "ref-band1", "ref-band2", "ref-band3"]
    assert keys(["default", "save_kill"]) == ["ref-proxy_1gpu-plain", "ref-band1", "ref-band2"]
    assert keys(fault_resume.CHOICES).count("ref-band1") == 1 and "ref-band2" not in keys(
        fault_resume.CHOICES
    )
    assert keys(["deterministic", "mlperf"]) == ["ref-mlperf_proxy_1gpu-plain", "ref-proxy_1gpu-det"]


RECORDED = Path(__file__).parents[1] / "benchmarks" / "results" / "resume"


def _recorded_launches(logs: Path) -> dict[str, fault_resume.Launch]:
    """The launches of a GPU call, read back from its committed log excerpts."""
    launches = {}
    for log in logs.glob("*.log"):
        key, i = log.stem.rsplit("-", 1)
        text = log.read_text()
        killed = re.search(r"SIGKILL to the job at ([\d.]+) s", text)
        run = fault_resume.Launch(shlex.split(text.splitlines()[0][2:]), returncode=-9 if killed else 0)
        run.killed_at_s = float(killed.group(1)) if killed else None
        launches[f"{'ref-band1' if key == 'ref-band' else key}#{i}"] = fault_resume.read_log(run, text)
    return launches


JUDGED_FIELDS = ("resumed_lm_loss", "reference_lm_loss", "max_abs_loss_diff", "resumed_from_iteration")


def test_the_recorded_gpu_run_is_judged_again_from_its_log_excerpts():
    """The committed excerpts hold what the judging reads: judged again, call A's deterministic and
    default cases give the numbers recorded on the GPU, and its one pair of default runs is now too
    few for a band verdict."""
    recorded = json.loads((RECORDED / "2026-12-01-h200-resume-a.json").read_text())
    judged = fault_resume.judge(["deterministic", "default"], _recorded_launches(RECORDED / "logs-a"))
    for case in ("deterministic", "default"):
        for field in JUDGED_FIELDS:
            assert judged[case][field] == recorded[case][field], (case, field)
    assert judged["band_default_mode"] == recorded["band_default_mode"]
    assert judged["deterministic"]["passed"] and judged["deterministic"]["max_abs_loss_diff"] == 0.0
    assert (
        judged["band_runs"] == ["ref-band1#0", "ref-proxy_1gpu-plain#0"] and not judged["default"]["passed"]
    )


def test_the_all_cases_gpu_run_passes_again_from_its_log_excerpts():
    """The one-call run of every case (the result issue 17 closes on): its excerpts, judged again, give
    the recorded losses, band and verdicts -- every case passed, the band from five uninterrupted runs."""
    recorded = json.loads((RECORDED / "2026-12-01-h200-resume.json").read_text())
    judged = fault_resume.judge(list(fault_resume.CHOICES), _recorded_launches(RECORDED / "logs"))
    for case in fault_resume.CHOICES:
        assert judged[case]["passed"] and recorded[case]["passed"], case
        for field in JUDGED_FIELDS:
            if field in recorded[case]:
                assert judged[case][field] == recorded[case][field], (case, field)
    assert (judged["band_default_mode"], judged["band_runs"]) == (
        recorded["band_default_mode"],
        recorded["band_runs"],
    )
    assert len(judged["band_runs"]) >= fault_resume.BAND_RUNS
    assert judged["deterministic"]["max_abs_loss_diff"] == 0.0
    assert all(judged[case]["first_step_equals_killed_run"] for case in ("save_kill", "async"))


def test_an_excerpt_keeps_every_line_the_judging_reads():
    noise = [f"rank0: config line {i}" for i in range(100)]
    kept = [
        "$ python -m dsv3_recipes.cli pretrain --factory proxy_1gpu",
        "  successfully loaded checkpoint from /c [ t 0/1, p 0/1 ] at iteration 4",
        'r0: DSV3_METRICS {"step": 5, "lm_loss": 5.5}',
        "### fault_resume: SIGKILL to the job at 3.0 s",
    ]
    text = "\n".join([kept[0], *noise[:50], *kept[1:3], *noise[50:], kept[3]]) + "\n"
    short = fault_resume.excerpt(text, tail=2)
    assert short.splitlines() == [*kept[:3], noise[-1], kept[3]]
    full, cut = fault_resume.Launch([]), fault_resume.Launch([])
    fault_resume.read_log(full, text), fault_resume.read_log(cut, short)
    assert (cut.rows, cut.resumed_from) == (full.rows, full.resumed_from) == ({5: {"lm_loss": 5.5}}, 4)


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
