"""Real submissions to the Slurm 22.05 cluster of tests/slurm/cluster.sh, through the `dsv3` CLI and
`executors.slurm(...)`: jobs that succeed, fail, detach, run 256 ranks on 64 nodes, and the directives
this Slurm lacks. The job's "container" is the host (tests/slurm/fake_pyxis.c applies the mounts and
the workdir), so a job runs this checkout's code with this venv's python, found on PATH.
"""

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_mlperf_launch as mlperf_launch
from test_conversion_checks import write_checkpoint
from test_plan import RECIPES_671B

from dsv3_recipes.launch import code_check
from dsv3_recipes.recipe.rules import importable

pytestmark = pytest.mark.slurm
# The cluster's nodes run this interpreter: jobs that tokenize or reach the train entry need the train side.
needs_train_side = pytest.mark.skipif(
    not (importable("torch") and importable("tokenizers")), reason="the job needs the train extra"
)

ACCOUNT = "dsv3ci"  # tests/slurm/cluster.sh
IMAGE = "registry.example.com/dsv3/dsv3-recipes:test"  # fake pyxis exports it as $FAKE_PYXIS_IMAGE
VENV_BIN = os.path.dirname(sys.executable)
data_dir = mlperf_launch.data_dir  # the fixture: a DATA_DIR with seed 002's file names


def dsv3(*argv: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """The CLI in a fresh process, as a user runs it; the job inherits this environment (sbatch)."""
    environment = os.environ | {"PATH": f"{VENV_BIN}:{os.environ['PATH']}"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "dsv3_recipes.cli", *argv],
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def slurm_args(tmp_path: Path, *extra: str) -> list[str]:
    """Submit from this login node with the job's files under tmp_path (a local tunnel's --job-dir)."""
    return [
        "-e",
        "slurm",
        "--account",
        ACCOUNT,
        "--container-image",
        IMAGE,
        "--job-dir",
        str(tmp_path / "nemo"),
        *extra,
    ]


def sacct_state(job_id: str) -> str:
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State"], capture_output=True, text=True
    )
    return out.stdout.strip()


def ended(job_id: str) -> str | None:
    """The job's final state, or None while sacct has no row for it yet or it has not ended."""
    state = sacct_state(job_id)
    return state if state and state.split()[0] not in ("PENDING", "RUNNING", "REQUEUED") else None


def wait_for(what: str, check, timeout: float = 120.0):
    """Poll ``check`` every half second until it returns something true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    pytest.fail(f"{what}: not within {timeout:.0f} s")


def job_id_of(line: str) -> str:
    """``NAME: job 12 FAILED`` / ``NAME: submitted job 12 ...`` -> ``12``."""
    words = line.split()
    return words[words.index("job") + 1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from dsv3_recipes.data import proxy_data

    root = tmp_path_factory.mktemp("corpus")
    return proxy_data.write_corpus(str(root), train_documents=40, validation_documents=10) | {
        "root": str(root)
    }


@needs_train_side
def test_preprocess_job_writes_the_dataset(corpus, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    out = tmp_path / "data" / "c4-train.en_0"
    shards = f"{corpus['root']}/raw/c4-train.*.json.gz"
    mounts = f"{corpus['root']}:{corpus['root']},{tmp_path}:{tmp_path}"
    result = dsv3(
        "preprocess", "-i", shards, "-o", str(out), "--tokenizer", corpus["tokenizer"], "--workers", "2",
        *slurm_args(tmp_path, "--container-mounts", mounts),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.endswith("SUCCEEDED") and sacct_state(job_id_of(last)) == "COMPLETED"
    assert len(IndexedDataset(f"{out}_text_document")) == 80  # 40 documents in each of the two shards


@needs_train_side
def test_pretrain_that_fails_in_the_job_is_a_failed_command(tmp_path):
    """proxy_1gpu reaches the train entry on a fake-GPU node and fails there: exit 1, state, log tail."""
    result = dsv3("pretrain", "-f", "proxy_1gpu", *slurm_args(tmp_path, "--gres-gpus-per-node", "8"))
    assert result.returncode == 1, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("dsv3: error: proxy_1gpu: job ") and " FAILED " in error
    # The job's log tail, printed here: the train entry's one-line refusal, with the GPUs Slurm gave.
    assert "dsv3: error: launch.gpus_per_node: recipe proxy_1gpu needs 1 GPU(s) per node" in result.stderr
    assert "sees none (CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7)" in result.stderr
    assert sacct_state(job_id_of(error.removeprefix("dsv3: error: "))) == "FAILED"
    assert "SUCCEEDED" not in result.stdout


def test_convert_job_that_fails_is_a_failed_command(tmp_path):
    """A conversion that fails in the job is a failed command (exit 1, state, log tail). This one fails in
    Megatron's TransformerConfig: the launch-side test checkpoint has 4 experts in 8 router groups."""
    write_checkpoint(tmp_path / "hf")
    result = dsv3(
        "convert", "import", "--hf-path", str(tmp_path / "hf"), "--megatron-path", str(tmp_path / "mg"),
        *slurm_args(tmp_path, "--container-mounts", f"{tmp_path}:{tmp_path}"),
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("dsv3: error: convert-import: job ") and " FAILED " in error
    assert sacct_state(job_id_of(error.removeprefix("dsv3: error: "))) == "FAILED"
    assert not (tmp_path / "mg").exists()


@needs_train_side
def test_job_whose_image_holds_other_code_refuses_to_start(corpus, tmp_path):
    """An "image" with an edited dsv3-recipes (a copy first on the job's PYTHONPATH) fails at job start."""
    image = tmp_path / "image"
    shutil.copytree(Path(code_check.__file__).parent, image / "dsv3_recipes")
    with open(image / "dsv3_recipes" / "preprocess.py", "a") as f:
        f.write("# edited after the image was built\n")
    result = dsv3(
        "preprocess", "-i", corpus["validation"], "-o", str(tmp_path / "x"),
        "--tokenizer", corpus["tokenizer"], *slurm_args(tmp_path),
        env={"ADDITIONAL_SLURM_PARAMS": f"export=ALL,PYTHONPATH={image}"},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    assert "is not the launcher's" in result.stderr and " FAILED " in result.stderr
    assert not (tmp_path / "x_text_document.bin").exists()


def test_detach_returns_after_submission_and_says_how_to_follow(tmp_path):
    result = dsv3("pretrain", "-f", "proxy_1gpu", *slurm_args(tmp_path, "--detach"))
    assert result.returncode == 0, result.stderr[-3000:]
    first, status, logs = result.stdout.strip().splitlines()
    job_id = job_id_of(first)
    queued = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    assert queued.stdout.strip() in ("PENDING", "CONFIGURING", "RUNNING")  # returned before the job ended
    home = shlex.quote(str(tmp_path / "nemo"))
    assert status.strip().startswith(f"NEMORUN_HOME={home} nemo experiment status proxy_1gpu_")
    assert logs.strip().startswith(f"NEMORUN_HOME={home} nemo experiment logs proxy_1gpu_")
    wait_for(f"job {job_id}", lambda: ended(job_id), 300)  # sacct may not list a job just submitted
    follow = subprocess.run(
        ["bash", "-c", status.strip()],
        env=os.environ | {"PATH": f"{VENV_BIN}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # NeMo-Run's own CLI, as printed, reads the job's state through sacct
    assert "Status: FAILED" in follow.stdout and f"Job id: {job_id}" in follow.stdout, follow.stdout[-2000:]


BINDPCIE_STUB = """#!/bin/bash
# stands in for mlperf-common's bindpcie: records this rank's command, environment and view, runs nothing
out={records}/rank-$SLURM_PROCID
printf '%s\\n' "$@" > "$out.args"
env > "$out.env"
{{ pwd; [ -f "${{@: -1}}" ] && echo config-visible; }} > "$out.view"
"""


def test_256_ranks_on_64_nodes_run_behind_bindpcie_with_the_recipes_env(tmp_path):
    """gb200_mxfp8_256gpu at its real size: 64 nodes x 4 ranks, each started as bindpcie python ..."""
    records = tmp_path / "records"
    records.mkdir()
    stub = tmp_path / "bindpcie"
    stub.write_text(BINDPCIE_STUB.format(records=records))
    stub.chmod(0o755)
    data = tmp_path / "data"
    data.mkdir()  # a dataset the login node sees: a submission from it checks the data first
    mlperf_launch.write_idx(data / "c4_text_document.idx", [4096] * 4)
    (data / "c4_text_document.bin").write_bytes(bytes(4 * 4096 * 4))
    result = dsv3(
        "pretrain", "-f", "gb200_mxfp8_256gpu",
        *slurm_args(tmp_path, "--bindpcie", str(stub), "--mpi", "pmix", "--time", "00:10:00"),
        f"dataset.data_paths=['{data}/c4_text_document']", f"checkpoint.save={tmp_path}/ckpt",
        "logger.wandb_project=None",
        "launch.nvl_segment_nodes=None",  # Slurm 22.05 has no --segment (the next test checks the rest)
        env={"SBATCH_GPUS_PER_NODE": "4"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("SUCCEEDED")

    ranks = {}
    for rank in range(256):
        env = dict(
            line.split("=", 1)
            for line in (records / f"rank-{rank}.env").read_text().splitlines()
            if "=" in line
        )
        ranks[rank] = (
            env,
            (records / f"rank-{rank}.args").read_text().split("\n"),
            (records / f"rank-{rank}.view").read_text(),
        )
    assert len(list(records.glob("rank-*.args"))) == 256
    for rank, (env, args, view) in ranks.items():
        assert (env["SLURM_PROCID"], env["SLURM_NTASKS"], env["PMIX_RANK"]) == (str(rank), "256", str(rank))
        assert (env["SLURM_NODEID"], env["SLURM_LOCALID"]) == (str(rank // 4), str(rank % 4))
        assert env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"  # --gpus-per-node=4 from $SBATCH_GPUS_PER_NODE
        assert (env["NVLINK_DOMAIN_SIZE"], env["NCCL_GRAPH_REGISTER"]) == ("72", "0")  # the recipe's env
        assert env["DSV3_LAUNCHER_CODE"] == code_check.launcher_env()["DSV3_LAUNCHER_CODE"]
        assert env["FAKE_PYXIS_IMAGE"] == IMAGE
        assert args[:5] == ["python", "-m", "nemo_run.core.runners.fdl_runner", "-n", "gb200_mxfp8_256gpu"]
        assert view.split() == ["/nemo_run/code", "config-visible"]  # the job dir mounted, workdir set
    assert len({env["SLURMD_NODENAME"] for env, _, _ in ranks.values()}) == 64
    assert (tmp_path / "ckpt").is_dir()  # the batch script made the mounted checkpoint dir before srun


@pytest.mark.parametrize("name", [*RECIPES_671B, "torchtitan_bf16"])
def test_sbatch_accepts_every_671b_script_but_the_directives_22_05_lacks(name, tmp_path):
    """`sbatch --test-only` on each rendered script: only --segment (Slurm >= 23.02) is refused."""
    script = tmp_path / "job.sh"
    result = dsv3(
        "pretrain", "-f", name, *slurm_args(tmp_path, "--dryrun-to", str(script)),
        f"dataset.data_paths=['{tmp_path}/c4_text_document']", f"checkpoint.save={tmp_path}/ckpt",
        "logger.wandb_project=None",
        env={"SBATCH_GPUS_PER_NODE": "8", **({"GPU_TYPE": "h100"} if name == "torchtitan_bf16" else {})},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == "" and script.read_text().startswith("#!/bin/bash")
    assert_only_segment_is_refused(script)


def assert_only_segment_is_refused(script: Path) -> None:
    """The script passes `sbatch --test-only`, or fails on --segment alone and passes without it."""
    lacking = [line for line in script.read_text().splitlines() if line.startswith("#SBATCH --segment=")]
    check = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True)
    if lacking:
        assert check.returncode != 0 and "unrecognized option '--segment" in check.stderr, check.stderr
        script.write_text("\n".join(line for line in script.read_text().splitlines() if line not in lacking))
        check = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True)
    assert check.returncode == 0 and "to start at" in check.stderr, check.stderr


@pytest.mark.parametrize(
    ("config", "segment"),
    [("config_GB300_64x4x256xtp1pp4cp1.sh", True), ("config_H100_128x8x256xtp2pp8cp1.sh", False)],
)
def test_sbatch_accepts_the_mlperf_run_scripts_job_but_segment(config, segment, data_dir, tmp_path):
    """run_deepseek_v3_671b.sh's DRYRUN=1 output (the recipe JSON, then the sbatch script) on this Slurm."""
    process = mlperf_launch.start_script(config, data_dir, tmp_path, ACCOUNT=ACCOUNT, PARTITION="ci")
    recipe, sbatch = mlperf_launch.rendered(process)
    assert recipe["name"].startswith("mlperf_") and sbatch.lstrip().startswith("#!/bin/bash")
    script = tmp_path / "job.sh"
    script.write_text(sbatch.lstrip())
    assert ("#SBATCH --segment=16" in sbatch) == segment
    assert_only_segment_is_refused(script)
