"""A cluster user's day on the Slurm 22.05 cluster of tests/slurm/cluster.sh (issue 28): a refused
submission is one line, Ctrl-C cancels an attached job, a dependency chain and an array run, a rendered
script runs with plain ``sbatch``, a requeued or restarted job resumes from its latest checkpoint, and
``nemo dsv3 pretrain ... run.executor=slurm`` (NeMo-Run's CLI) submits the job ``dsv3 pretrain`` does.
The resume jobs run tests/resume_standin.py, a CPU stand-in for the train entry that saves and resumes
as Megatron does; ``launch`` gives it ``checkpoint.load`` as it gives ``pretrain``.
"""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import nemo_run as run
import pytest
import resume_standin
from test_slurm_cluster import (
    ACCOUNT,
    IMAGE,
    VENV_BIN,
    corpus,  # noqa: F401  (a fixture)
    dsv3,
    ended,
    job_id_of,
    needs_train_side,
    sacct_state,
    slurm_args,
    wait_for,
)

from dsv3_recipes.launch import executors, submit
from dsv3_recipes.launch.options import LaunchOptions, SlurmOptions

pytestmark = pytest.mark.slurm
TESTS = str(Path(__file__).parent)
REPO = str(Path(__file__).parent.parent)


def sacct(job_id: str, fields: str) -> list[list[str]]:
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", job_id, "-o", fields], capture_output=True, text=True, check=True
    )
    return [line.split("|") for line in out.stdout.splitlines() if line]


def squeue(job_id: str, field: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", field], capture_output=True, text=True)
    return out.stdout.strip()


def start_again_now(job_id: str, node: str) -> None:
    """Slurm holds a requeued batch job for two minutes (its credential on the old node is revoked): let
    it start at once on another node, as after that node failed."""
    wait_for(f"job {job_id} pending again", lambda: squeue(job_id, "%T") == "PENDING", 30)
    subprocess.run(
        ["scontrol", "update", f"JobId={job_id}", f"ExcNodeList={node}", "StartTime=now"], check=True
    )


@pytest.fixture
def job_env(monkeypatch):
    """The job inherits the submitting environment (sbatch): this venv's python, the stand-in's module."""
    monkeypatch.setenv("PATH", f"{VENV_BIN}:{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([REPO, TESTS]))


def slurm_options(tmp_path: Path, **options) -> SlurmOptions:
    return SlurmOptions(
        account=ACCOUNT,
        container_image=IMAGE,
        container_mounts=[f"{tmp_path}:{tmp_path}"],
        job_dir=str(tmp_path / "nemo"),
        **options,
    )


def standin_task(tmp_path: Path, **kwargs) -> run.Partial:
    recipe = submit.recipe_task(
        "proxy_1gpu",
        [f"checkpoint.save={tmp_path}/ckpt", "checkpoint.save_interval=2", "train.train_iters=10"],
        executor="slurm",
    ).recipe
    return run.Partial(resume_standin.train, recipe=recipe, **kwargs)


def tracker(tmp_path: Path) -> int:
    path = tmp_path / "ckpt" / "latest_checkpointed_iteration.txt"
    return int(path.read_text()) if path.is_file() else 0


def start_logs(tmp_path: Path, job_id: str) -> dict[int, str]:
    """Each start's srun log: NeMo-Run names them by SLURM_RESTART_COUNT."""
    logs = (tmp_path / "nemo").rglob(f"log-*_{job_id}_*.out")
    return {int(p.stem.rsplit("_", 1)[1]): p.read_text() for p in logs}


@pytest.mark.parametrize(
    ("option", "said"),
    [
        (["--account", "nosuch"], "Invalid account or account/partition combination specified"),
        (["--account", ACCOUNT, "--partition", "nosuch"], "Invalid partition name specified"),
    ],
)
def test_a_refused_submission_is_one_line(option, said, tmp_path):
    argv = ["-e", "slurm", "--container-image", IMAGE, "--job-dir", str(tmp_path / "nemo"), *option]
    result = dsv3("pretrain", "-f", "proxy_1gpu", *argv)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"dsv3: error: proxy_1gpu: not submitted: sbatch: error: Batch job submission failed: {said}"
    ]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_cancels_the_attached_job_and_says_so(signum, tmp_path):
    """A held job stays queued until the interrupt: the command cancels it and ends at once."""
    log = tmp_path / "stderr"
    environment = os.environ | {"PATH": f"{VENV_BIN}:{os.environ['PATH']}", "ADDITIONAL_SLURM_PARAMS": "hold"}
    with open(log, "w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "dsv3_recipes.cli", "pretrain", "-f", "proxy_1gpu", *slurm_args(tmp_path)],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    try:
        found = wait_for("the job's id", lambda: re.search(r"Job id: (\d+)", log.read_text()), 120)
        job_id = found.group(1)
        assert squeue(job_id, "%T") == "PENDING"
        process.send_signal(signum)
        assert process.wait(timeout=30) == 128 + signum
    finally:
        process.kill()
    last = log.read_text().strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert last == f"proxy_1gpu: cancelled job {job_id} on {name}; --detach leaves a job running"
    assert wait_for("the job's end", lambda: ended(job_id), 30).startswith("CANCELLED")


@needs_train_side
def test_a_dependency_chain_starts_the_second_job_after_the_first(corpus, tmp_path):  # noqa: F811
    """Two preprocess jobs, the second --dependency afterok on the first; both named for their task."""
    ids = []
    for part in ("first", "second"):
        chain = ["--dependency", f"afterok:{ids[0]}"] if ids else []
        result = dsv3(
            "preprocess", "-i", corpus["validation"], "-o", str(tmp_path / part), "--tokenizer",
            corpus["tokenizer"], "--workers", "1", *slurm_args(tmp_path, "--detach", *chain),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        ids.append(job_id_of(result.stdout.splitlines()[0]))
    assert squeue(ids[1], "%T %r") in ("PENDING Dependency", "RUNNING None", "")
    for job_id in ids:
        assert wait_for(f"job {job_id}", lambda j=job_id: ended(j), 180) == "COMPLETED"
    (first_end,), (second_start,) = sacct(ids[0], "End"), sacct(ids[1], "Start")
    assert second_start >= first_end  # ISO times
    names = [sacct(job_id, "JobName%60")[0][0] for job_id in ids]
    assert [n.rsplit("-", 1)[0] for n in names] == ["preprocess-first", "preprocess-second"]
    assert (tmp_path / "second_text_document.idx").is_file()


def test_an_array_of_three_runs_each_index(tmp_path, job_env, capsys):
    """``executors.slurm(array=...)``: three tasks of one array job, each with its own index."""
    executor = executors.slurm(
        account=ACCOUNT, container_image=IMAGE, gpus_per_node=1, array="0-2", time="5",
        container_mounts=[f"{tmp_path}:{tmp_path}"],
    )  # fmt: skip
    task = run.Partial(resume_standin.array_task, directory=str(tmp_path))
    options = LaunchOptions(executor="slurm", detach=True, yes=True, slurm=slurm_options(tmp_path))
    submit.run_task(task, executor, "array", options)
    job_id = job_id_of(capsys.readouterr().out.splitlines()[0])

    def all_ended():
        rows = sacct(job_id, "JobID,State")
        done = len(rows) == 3 and all(row[1] not in ("PENDING", "RUNNING") for row in rows)
        return rows if done else None

    rows = wait_for("the array's three tasks", all_ended, 120)
    assert sorted(rows) == [[f"{job_id}_{i}", "COMPLETED"] for i in range(3)]
    assert [(tmp_path / f"task-{i}").read_text() for i in range(3)] == [job_id] * 3


@needs_train_side
def test_a_dryrun_to_file_runs_with_plain_sbatch(corpus, tmp_path):  # noqa: F811
    """The rendered script is complete: its job directory (task, code, log directory) is kept."""
    script = tmp_path / "job.sh"
    result = dsv3(
        "preprocess", "-i", corpus["validation"], "-o", str(tmp_path / "out"), "--tokenizer",
        corpus["tokenizer"], "--workers", "1", *slurm_args(tmp_path, "--dryrun-to", str(script)),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    submitted = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert wait_for(f"job {job_id}", lambda: ended(job_id), 180) == "COMPLETED"
    assert (tmp_path / "out_text_document.idx").is_file()


def test_a_requeued_job_resumes_from_its_latest_checkpoint(tmp_path, job_env, capsys):
    """``--requeue``: requeued at its step-4 checkpoint (``scontrol requeue``, as a preemption does), the
    job comes back on another node and continues from step 5 with no user action."""
    options = LaunchOptions(
        executor="slurm", detach=True, yes=True, slurm=slurm_options(tmp_path, requeue=True)
    )
    submit.launch(standin_task(tmp_path, step_seconds=1.0), options)
    job_id = job_id_of(capsys.readouterr().out.splitlines()[0])
    wait_for("the step-4 checkpoint", lambda: tracker(tmp_path) >= 4, 120)
    node = squeue(job_id, "%N")
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    start_again_now(job_id, node)
    assert wait_for(f"job {job_id}", lambda: ended(job_id), 120) == "COMPLETED"
    logs = start_logs(tmp_path, job_id)
    resumed = int(re.search(r"start 1: resumed from \S+ at iteration (\d+)", logs[1]).group(1))
    assert "at iteration 0" in logs[0] and resumed >= 4
    assert f"STANDIN step {resumed + 1}\n" in logs[1] and f"STANDIN step {resumed}\n" not in logs[1]
    assert tracker(tmp_path) == 10 and sacct(job_id, "NodeList")[0][0] != node


def test_a_job_that_keeps_failing_stops_after_max_restarts_and_says_why(tmp_path):
    """``--max-restarts 1``: each start crashes after three steps; the restart resumes from the saved
    step, crashes again, and the attached command fails naming the restarts."""
    log = tmp_path / "stderr"
    launcher = (
        "import sys, nemo_run as run, test_slurm_day as t\n"
        "from pathlib import Path\n"
        "from dsv3_recipes.launch import submit\n"
        "from dsv3_recipes.launch.options import LaunchOptions\n"
        "tmp = Path(sys.argv[1])\n"
        "options = LaunchOptions(executor='slurm', yes=True, slurm=t.slurm_options(tmp, max_restarts=1))\n"
        "submit.launch(t.standin_task(tmp, step_seconds=0.2, steps_per_start=3), options)\n"
    )
    environment = os.environ | {
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join([REPO, TESTS]),
    }
    with open(log, "w") as err:
        process = subprocess.Popen(
            [sys.executable, "-c", launcher, str(tmp_path)], env=environment, stderr=err, stdout=err
        )
    try:
        found = wait_for("the job's id", lambda: re.search(r"Job id: (\d+)", log.read_text()), 120)
        job_id = found.group(1)
        wait_for("the first start's crash", lambda: "crashed" in start_logs(tmp_path, job_id).get(0, ""), 120)
        start_again_now(job_id, node=sacct(job_id, "NodeList")[0][0])
        assert process.wait(timeout=120) == 1
    finally:
        process.kill()
    logs = start_logs(tmp_path, job_id)
    assert "at iteration 2" in logs[1] and "crashed before step 6" in logs[1]  # resumed, then crashed
    assert "after 1 restart(s) (--max-restarts 1: it keeps failing)" in log.read_text().splitlines()[-1]
    assert sacct_state(job_id) == "FAILED" and tracker(tmp_path) == 4


def nemo_pretrain(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``nemo dsv3 pretrain --factory proxy_1gpu`` on this cluster, with slurm_args' options in NeMo-Run's
    syntax; the job inherits this environment (sbatch), as for ``dsv3``."""
    executor = [
        "run.executor=slurm",
        f"run.executor.account={ACCOUNT}",
        f"run.executor.container_image={IMAGE}",
        f"run.executor.job_dir={tmp_path / 'nemo'}",
    ]
    return subprocess.run(
        [f"{VENV_BIN}/nemo", "dsv3", "pretrain", "--factory", "proxy_1gpu", *executor, *args, "-y"],
        env=os.environ | {"PATH": f"{VENV_BIN}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@needs_train_side
def test_nemo_run_cli_submits_the_job_dsv3_pretrain_does(tmp_path):
    """As test_pretrain_that_fails_in_the_job_is_a_failed_command: the job reaches the train entry on a
    fake-GPU node and fails there; exit 1, one line, the log tail; named ``<recipe>-<id6>``."""
    result = nemo_pretrain(tmp_path, "run.executor.gres_gpus_per_node=8")
    assert result.returncode == 1, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("pretrain: proxy_1gpu: job ") and " FAILED " in error
    assert "dsv3: error: launch.gpus_per_node: recipe proxy_1gpu needs 1 GPU(s) per node" in result.stderr
    exp_id = re.search(r"nemo experiment logs (proxy_1gpu_\d+) 0\)$", error).group(1)
    job_id = job_id_of(error)
    wait_for(f"job {job_id} in sacct", lambda: ended(job_id), 60)
    assert sacct(job_id, "JobName%60,State") == [[f"proxy_1gpu-{exp_id[-6:]}", "FAILED"]]


def test_nemo_run_cli_refuses_a_bad_executor_value_in_one_line(tmp_path):
    result = nemo_pretrain(tmp_path, "run.executor.time=abc")
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "pretrain: run.executor.time: 'abc' is not a Slurm time limit; use one of MM, MM:SS, HH:MM:SS, "
        "D-HH, D-HH:MM, D-HH:MM:SS"
    )
    assert not (tmp_path / "nemo").exists()  # no experiment, so nothing was submitted
