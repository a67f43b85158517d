"""Kill a run with SIGKILL right after a checkpoint, relaunch the identical command, compare the losses.

    python benchmarks/fault_resume.py [--cases deterministic default async save_kill mlperf]

Every case trains the 1-GPU proxy shrunk (`--shrink 1`) for 8 steps with a checkpoint every 4 into
its own directory (``checkpoint.save`` = ``checkpoint.load``, so the first launch starts fresh and the
relaunch resumes). The first launch is killed -- SIGKILL to every process of the job, as a node failure
would -- when its log says the iteration-4 checkpoint was written (``save_kill``: when the iteration-8
save has begun, so that the partial checkpoint must not be picked up). The relaunch must resume from
iteration 4 and its losses for steps 5-8 are compared with an uninterrupted run of the same command:

- ``deterministic`` (``train.deterministic=True``): bit-identical;
- ``default``, ``async`` (``checkpoint.async_save=True``), ``save_kill``: within twice the band, the
  largest difference between any two of at least four uninterrupted default-mode runs (the references,
  and every first launch that trained all 8 steps before its kill). The default kernels are not
  deterministic; in a random-walk model of that drift a perfect resume fails "twice the band of one
  pair" 16% of the time, twice the band of four runs 1%;
- every case whose killed launch logged step 5 before the kill: the relaunch's step-5 loss equals it
  exactly (the forward pass of the same restored weights on the same batch);
- ``mlperf`` (the MLPerf proxy, relaunched with ``checkpoint.load`` as RESUME=1 does): the step count
  and the learning rate of steps 5-8 equal the uninterrupted run's;
- ``extend``: a finished 8-step run relaunched with ``train.train_iters=12`` and
  ``scheduler.override_opt_param_scheduler=True`` resumes from iteration 8 and trains steps 9-12.

The cases run at the same time on one GPU (their times are not throughput figures). Writes
<results-dir>/<date>-<gpu>-resume.json (and, as launches finish, <results-dir>/resume-progress.json
and an excerpt of each launch's log under <results-dir>/logs/), the whole logs under <work>/; exits 1
if a case fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from dsv3_recipes.report.logs import parse_log

STEPS = 8
SAVE_INTERVAL = 4
# Micro-batch 2 instead of the proxy's 8: about 5 GiB a run, so that every case and reference fit on one
# GPU at once (at 8, nine runs of 16 GiB ran out of memory on a 141 GB H200).
MICRO_BATCH = "train.micro_batch_size=2"
DETERMINISTIC = ["train.deterministic=True"]
EXTEND = ["train.train_iters=12", "scheduler.override_opt_param_scheduler=True"]
# Uninterrupted default-mode runs the band is taken from: enough band references are added to reach it.
BAND_RUNS = 4
SAVED = re.compile(rf"successfully saved checkpoint from iteration\s+{SAVE_INTERVAL}\b")
SAVING_LAST = re.compile(rf"saving checkpoint at iteration\s+{STEPS}\b")
LOADED = re.compile(r"successfully loaded checkpoint from .* at iteration (\d+)")
# The benchmark protocol's condition, in the result and in the progress file.
CONDITION = {
    "data": {"kind": "mock"},
    "routing": "natural",
    "concurrent_runs": "every case and reference at once on one GPU",
}
# What a log excerpt keeps besides its command and its last lines: every line the judging reads.
EXCERPT = re.compile(
    r"DSV3_METRICS|DSV3_SUMMARY|iteration\s+\d+/|successfully (saved|loaded) checkpoint|saving checkpoint at"
    r"|### fault_resume|Error|error:"
)


@dataclass
class Launch:
    """One `dsv3 pretrain` process: its per-step rows, how it ended, where it resumed from."""

    command: list[str]
    returncode: int | None = None
    wall_s: float = 0.0
    killed_at_s: float | None = None
    rows: dict[int, dict[str, float]] = field(default_factory=dict)
    resumed_from: int | None = None


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the launcher, torchrun, the ranks), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def launch(command: list[str], log: Path, kill_on: re.Pattern[str] | None = None) -> Launch:
    """Run the command, tee its output to ``log``; SIGKILL the whole job when ``kill_on`` matches."""
    result = Launch(command)
    start = time.perf_counter()
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    with log.open("w") as out:
        out.write(f"$ {shlex.join(command)}\n")
        for line in proc.stdout:  # type: ignore[union-attr]
            out.write(line)
            if kill_on is not None and result.killed_at_s is None and kill_on.search(line):
                for pid in [*_descendants(proc.pid), proc.pid]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                result.killed_at_s = time.perf_counter() - start
                out.write(f"### fault_resume: SIGKILL to the job at {result.killed_at_s:.1f} s\n")
    result.returncode = proc.wait()
    result.wall_s = time.perf_counter() - start
    read_log(result, log.read_text())
    return result


def read_log(run: Launch, text: str) -> Launch:
    """The per-step rows and the iteration resumed from, out of a launch's log (or its excerpt)."""
    run.rows = parse_log(text).steps
    if match := LOADED.search(text):
        run.resumed_from = int(match.group(1))
    return run


def excerpt(text: str, tail: int = 20) -> str:
    """The command, every line the judging reads, and the last ``tail`` lines: what a result keeps."""
    lines = text.splitlines()
    keep = {0, *range(max(len(lines) - tail, 0), len(lines))}
    keep |= {i for i, line in enumerate(lines) if EXCERPT.search(line)}
    return "".join(lines[i] + "\n" for i in sorted(keep))


@dataclass
class Case:
    name: str
    recipe: str
    overrides: list[str]
    kill_on: re.Pattern[str]
    compare: str  # "exact" | "band" | "learning_rate"


CASES = {
    "deterministic": Case("deterministic", "proxy_1gpu", DETERMINISTIC, SAVED, "exact"),
    "default": Case("default", "proxy_1gpu", [], SAVED, "band"),
    "async": Case("async", "proxy_1gpu", ["checkpoint.async_save=True"], SAVED, "band"),
    "save_kill": Case("save_kill", "proxy_1gpu", [], SAVING_LAST, "band"),
    # A target below reach keeps the proxy from stopping early on mock tokens: all 8 steps run.
    "mlperf": Case("mlperf", "mlperf_proxy_1gpu", ["mlperf.target_log_ppl=0.1"], SAVED, "learning_rate"),
}
CHOICES = [*CASES, "extend"]


def reference(case: Case) -> tuple[str, str, tuple[str, ...]]:
    """The uninterrupted run a case is compared with: same recipe and mode, nothing about saving."""
    mode = [o for o in case.overrides if o != "checkpoint.async_save=True"]
    return (f"ref-{case.recipe}-{'det' if mode == DETERMINISTIC else 'plain'}", case.recipe, tuple(mode))


def command(
    recipe: str, overrides: list[str], work: Path, name: str, resume: bool = True, save: bool = True
) -> list[str]:
    """``save=False`` for the references: they give losses only, and eleven runs' checkpoints (3 GB
    each) filled the lent machine's 64 GiB disk."""
    ckpt = work / name / "checkpoints"
    saving = [f"checkpoint.save={ckpt}", f"checkpoint.save_interval={SAVE_INTERVAL}"] if save else []
    return [
        sys.executable, "-m", "dsv3_recipes.cli", "pretrain", "--factory", recipe, "--shrink", "1",
        f"train.train_iters={STEPS}", MICRO_BATCH, *saving,
        *([f"checkpoint.load={ckpt}"] if resume else []), f"output_dir={work / name / 'run'}", *overrides,
    ]  # fmt: skip


def losses(run: Launch, steps: range, key: str = "lm_loss") -> list[float | None]:
    return [run.rows.get(s, {}).get(key) for s in steps]


def max_abs_diff(a: list[float | None], b: list[float | None]) -> float | None:
    if None in a or None in b:
        return None
    return max(abs(x - y) for x, y in zip(a, b, strict=True))  # type: ignore[operator]


def progress(launches: dict[str, Launch]) -> dict[str, object]:
    """How each finished launch ended, for a run cut short before every case could be judged."""
    finished = {
        key: {
            "exit_code": run.returncode,
            "wall_s": run.wall_s,
            "killed_at_s": run.killed_at_s,
            "resumed_from_iteration": run.resumed_from,
            "lm_loss": {step: row.get("lm_loss") for step, row in sorted(run.rows.items())},
        }
        for key, run in sorted(launches.items())
    }
    return {**CONDITION, "launches": finished}


def run_cases(names: list[str], work: Path, out: Path | None = None) -> dict[str, object]:
    """Each case's chain (reference, killed launch, relaunch) in its own thread, all at once; after
    every launch, ``out`` (if given) holds what has finished so far and the launch's log excerpt."""
    launches: dict[str, Launch] = {}
    lock = threading.Lock()
    if out is not None:
        (out / "logs").mkdir(parents=True, exist_ok=True)

    def chain(key: str, *steps: tuple[list[str], re.Pattern[str] | None]) -> None:
        for i, (cmd, kill_on) in enumerate(steps):
            log = work / f"{key}-{i}.log"
            done = launch(cmd, log, kill_on)
            with lock:
                launches[f"{key}#{i}"] = done
                if out is not None:
                    (out / "logs" / log.name).write_text(excerpt(log.read_text()))
                    (out / "resume-progress.json").write_text(json.dumps(progress(launches), indent=1) + "\n")
        shutil.rmtree(work / key / "checkpoints", ignore_errors=True)  # the disk holds a few at a time

    jobs = []
    for key, recipe, overrides in references(names):
        cmd = command(recipe, list(overrides), work, key, resume=False, save=False)
        jobs.append(threading.Thread(target=chain, args=(key, (cmd, None))))
    if "extend" in names:
        first = command("proxy_1gpu", [], work, "extend")
        jobs.append(threading.Thread(target=chain, args=("extend", (first, None), (first + EXTEND, None))))
    for name in (n for n in names if n != "extend"):
        case = CASES[name]
        first = command(case.recipe, case.overrides, work, name, resume=case.recipe != "mlperf_proxy_1gpu")
        again = command(case.recipe, case.overrides, work, name)  # RESUME=1 adds checkpoint.load
        jobs.append(threading.Thread(target=chain, args=(name, (first, case.kill_on), (again, None))))
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    return judge(names, launches)


def band_cases(names: list[str]) -> list[str]:
    return [n for n in names if n in CASES and CASES[n].compare == "band"]


def references(names: list[str]) -> list[tuple[str, str, tuple[str, ...]]]:
    """The uninterrupted runs: one per recipe and mode, and with band cases enough default-mode runs
    for ``BAND_RUNS`` (the first launches of ``save_kill`` and ``extend`` train all 8 steps too)."""
    refs = sorted({reference(CASES[n]) for n in names if n in CASES})
    if band_cases(names):
        full_first_launches = sum(n in names for n in ("save_kill", "extend"))
        extra = max(1, BAND_RUNS - 1 - full_first_launches)
        refs += [(f"ref-band{i}", "proxy_1gpu", ()) for i in range(1, extra + 1)]
    return refs


def uninterrupted_default_runs(names: list[str], launches: dict[str, Launch]) -> dict[str, Launch]:
    """Default-mode launches that trained every step from the start: the band's samples."""
    keys = [f"{reference(CASES['default'])[0]}#0", *(f"{n}#0" for n in [*band_cases(names), "extend"])]
    keys += [f"{key}#0" for key, _, _ in references(names) if key.startswith("ref-band")]
    every_step = set(range(1, STEPS + 1))
    return {
        k: launches[k]
        for k in keys
        if k in launches
        and launches[k].resumed_from is None
        and every_step <= {s for s, row in launches[k].rows.items() if "lm_loss" in row}
    }


def judge(names: list[str], launches: dict[str, Launch]) -> dict[str, object]:
    """Each case's verdict from its launches (``<chain>#<i>``), as ``run_cases`` ran them."""
    after = range(SAVE_INTERVAL + 1, STEPS + 1)
    band, samples = None, {}
    if band_cases(names):
        samples = uninterrupted_default_runs(names, launches)
        pairs = [
            max_abs_diff(losses(a, after), losses(b, after)) for a, b in combinations(samples.values(), 2)
        ]
        band = max(pairs, default=None)  # type: ignore[type-var]
    results: dict[str, object] = {
        "band_default_mode": band,
        "band_runs": sorted(samples),
        "steps_compared": list(after),
    }
    if "extend" in names:
        done, extended = launches["extend#0"], launches["extend#1"]
        results["extend"] = {
            "command": shlex.join(["dsv3", *extended.command[3:]]),
            "first_run_steps_logged": sorted(done.rows),
            "resumed_from_iteration": extended.resumed_from,
            "extended_steps_logged": sorted(extended.rows),
            "extended_learning_rate": [extended.rows[s].get("learning_rate") for s in sorted(extended.rows)],
            "exit_codes": [done.returncode, extended.returncode],
            "passed": done.returncode == 0
            and extended.returncode == 0
            and extended.resumed_from == STEPS
            and sorted(extended.rows) == list(range(STEPS + 1, 13)),
        }
    for name in (n for n in names if n != "extend"):
        case = CASES[name]
        killed, resumed = launches[f"{name}#0"], launches[f"{name}#1"]
        ref = launches[f"{reference(case)[0]}#0"]
        diff = max_abs_diff(losses(resumed, after), losses(ref, after))
        # The killed launch's own step 5, where it got that far: the same weights and batch.
        killed_next, resumed_next = losses(killed, after)[0], losses(resumed, after)[0]
        same_next_step = None if killed_next is None else resumed_next == killed_next
        entry: dict[str, object] = {
            "command": shlex.join(["dsv3", *resumed.command[3:]]),
            "kill_point": f"after log line /{case.kill_on.pattern}/",
            "killed_at_s": killed.killed_at_s,
            "killed_steps_logged": sorted(killed.rows),
            "resumed_from_iteration": resumed.resumed_from,
            "resumed_steps_logged": sorted(resumed.rows),
            "resumed_lm_loss": losses(resumed, after),
            "reference_lm_loss": losses(ref, after),
            "max_abs_loss_diff": diff,
            "first_step_equals_killed_run": same_next_step,
            "time_lost_s": killed.wall_s + resumed.wall_s - ref.wall_s,
            "exit_codes": [killed.returncode, resumed.returncode, ref.returncode],
        }
        ok = killed.killed_at_s is not None and resumed.returncode == 0 and ref.returncode == 0
        ok = ok and resumed.resumed_from == SAVE_INTERVAL and sorted(resumed.rows) == list(after)
        ok = ok and same_next_step is not False
        if case.compare == "exact":
            ok = ok and diff == 0.0
        elif case.compare == "band":
            ok = ok and len(samples) >= BAND_RUNS and diff is not None and diff <= 2 * band  # type: ignore[operator]
        else:
            lr_resumed, lr_ref = losses(resumed, after, "learning_rate"), losses(ref, after, "learning_rate")
            entry["resumed_learning_rate"], entry["reference_learning_rate"] = lr_resumed, lr_ref
            ok = ok and None not in lr_ref and lr_resumed == lr_ref
        entry["passed"] = ok
        results[name] = entry
    return results
