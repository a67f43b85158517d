"""``nemo dsv3 pretrain --factory NAME recipe.k=v``: NeMo-Run's own CLI, with dsv3 pretrain's checks;
``run.executor=slurm`` renders what ``dsv3 pretrain -e slurm`` renders (its cluster run: test_slurm_day)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dsv3_recipes.cli import main

NEMO = str(Path(sys.executable).parent / "nemo")
IMAGE = "registry.example.com/dsv3/dsv3-recipes:test"
SLURM = ["run.executor=slurm", "run.executor.account=acct", f"run.executor.container_image={IMAGE}"]


def nemo(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [NEMO, "dsv3", "pretrain", *args, "--dryrun", "-y"]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=240)


def test_a_recipe_and_its_override_dry_run_through_nemo_run(tmp_path):
    out = nemo("--factory", "proxy_1gpu", "recipe.train.train_iters=7", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Dry run for task dsv3_recipes.train.entry:pretrain" in out.stdout
    assert "train_iters=7" in out.stdout


REFUSALS = [
    (
        ["--factory", "proxy_1gpu", "recipe.model.expert_model_parallel_size=3"],
        "pretrain: model.expert_model_parallel_size: 64 experts not divisible by EP=3",
    ),
    (
        ["--factory", "os.system"],
        "pretrain: --factory: 'os.system' is not a recipe; allowed: b200_bf16_256gpu, ",
    ),
    (
        ["--factory", "proxy_1gpu", *SLURM, "run.executor.time=4h"],
        "pretrain: run.executor.time: '4h' is not a Slurm time limit; use one of MM, MM:SS, ",
    ),
    (
        ["--factory", "proxy_1gpu", *SLURM, "run.executor.max_restarts=abc"],
        "pretrain: run.executor.max_restarts: 'abc' is not int",
    ),
    (
        ["--factory", "proxy_1gpu", *SLURM, "run.executor.nodes=2"],  # sized from the recipe
        "pretrain: run.executor.nodes: no such option; allowed: account, partition, time, ",
    ),
    (
        ["--factory", "proxy_1gpu", "run.executor=os.getcwd"],
        "pretrain: run.executor: 'os.getcwd' is not an executor; allowed: slurm",
    ),
    (
        ["--factory", "proxy_1gpu", "run.plugins=os.getcwd"],
        "pretrain: run.plugins: 'os.getcwd': nemo dsv3 pretrain takes no NeMo-Run plugins",
    ),
    (  # NeMo-Run's parser imports and calls a dotted name given as a value: the name became the cwd
        ["--factory", "proxy_1gpu", "recipe.name=os.getcwd"],
        "pretrain: recipe.name: 'os.getcwd' is not a literal value: NeMo-Run's parser would run it",
    ),
    (  # ... and evaluates a conditional expression with every builtin: this one would write a file
        ["--factory", "proxy_1gpu", "recipe.name='x' if open('written', 'w') else 'y'"],
        "pretrain: recipe.name: \"'x' if open('written', 'w') else 'y'\" is not a literal value",
    ),
    (  # a value is read as `dsv3 pretrain` reads it, before NeMo-Run's parser (many lines, exit 1)
        ["--factory", "proxy_1gpu", "recipe.train.train_iters=abc"],
        "pretrain: train.train_iters: expected int or None, got 'abc'",
    ),
    (
        ["--factory", "proxy_1gpu", "train.train_iters=5"],
        "pretrain: train.train_iters: an override here is recipe.FIELD=VALUE",
    ),
    (
        ["--factory", "proxy_1gpu", "executor=slurm"],
        "pretrain: executor: NeMo-Run's syntax is run.executor (run.executor=slurm)",
    ),
    (  # a YAML file's _target_ is imported by NeMo-Run's loader: none is read
        ["--factory", "proxy_1gpu", "--yaml", "task.yaml"],
        "pretrain: --yaml: nemo dsv3 pretrain reads no YAML; give recipe.FIELD=VALUE overrides",
    ),
    (
        ["--factory", "proxy_1gpu", *SLURM, "run.executor.account=os.getcwd"],
        "pretrain: run.executor.account: 'os.getcwd' is not a literal value",
    ),
]
# Every refusal in one process (NeMo-Run's CLI app called once per case, in order): a subprocess each
# took 20-30 s of start-up on the CI machine.
REFUSE_ALL = """
import contextlib, io, json, sys
cases = json.loads(sys.argv[1])
sys.argv = ["nemo", *cases[0]]  # NeMo-Run's app finds the entrypoints of the namespace sys.argv names
from nemo_run.__main__ import app
results = []
for args in cases:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            app([*args, "--dryrun", "-y"], standalone_mode=False)
            code = 0
        except SystemExit as e:
            code = e.code
    results.append({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("refusals")
    cases = json.dumps([["dsv3", "pretrain", *args] for args, _ in REFUSALS])
    out = subprocess.run(
        [sys.executable, "-c", REFUSE_ALL, cases], capture_output=True, text=True, cwd=cwd, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return cwd, json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", range(len(REFUSALS)), ids=[args[-1][:40] for args, _ in REFUSALS])
def test_a_refusal_is_one_line_and_nothing_runs(refusals, case):
    cwd, results = refusals
    result, line = results[case], REFUSALS[case][1]
    assert result["code"] == 2, result["stderr"][-2000:]
    assert result["stderr"].strip().splitlines()[-1].startswith(line)
    assert "Dry run" not in result["stdout"] and list(cwd.iterdir()) == []  # nothing written, by any case


def test_slurm_renders_the_script_dsv3_pretrain_renders(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SBATCH_PARTITION", "batch")  # the same environment, read by both
    home = f"{tmp_path}/nemo"  # NeMo-Run's home for the launch, where the script's logs go
    nemo_args = [*SLURM, "run.executor.qos=low", f"run.executor.job_dir={home}"]
    out = nemo("--factory", "proxy_1gpu", "recipe.train.train_iters=7", *nemo_args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    argv = ["pretrain", "-f", "proxy_1gpu", "train.train_iters=7", "-e", "slurm", "--account", "acct"]
    assert main([*argv, "--container-image", IMAGE, "--qos", "low", "--job-dir", home, "--dryrun"]) == 0
    ids = re.compile(r"(?<=proxy_1gpu[_-])\d+")  # each dry run is its own experiment
    script = ids.sub("ID", out.stdout[out.stdout.index("#!/bin/bash") :])
    assert "#SBATCH --job-name=proxy_1gpu-ID" in script and "#SBATCH --qos=low" in script
    assert "#SBATCH --partition=batch" in script and f"#SBATCH --output={home}/experiments/" in script
    assert script == ids.sub("ID", capsys.readouterr().out)


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ("5", True),
        ("h200", True),
        ("'os.getcwd'", True),  # a quoted string is the string
        ('["/data/a_text_document"]', True),
        ("{'NCCL_DEBUG': 'INFO'}", True),
        ("1e-4", True),
        ("/abs/path/tokenizer", True),
        ("os.getcwd", False),
        ("os.path.join('a')", False),
        ("Config[os.getcwd]", False),
        ("lambda: 1", False),
        ("__import__('os')", False),
    ],
)
def test_only_literals_reach_nemo_runs_parser(value, literal):
    from dsv3_recipes.launch import safe
    from dsv3_recipes.recipe.schema import RecipeError

    if literal:
        assert safe.cli_value("recipe.x", value) == value
    else:
        with pytest.raises(RecipeError, match=r"^recipe\.x: .* is not a literal value"):
            safe.cli_value("recipe.x", value)
