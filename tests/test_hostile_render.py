"""Every recipe field and executor argument that reaches a rendered sbatch script, given a hostile value,
is refused naming it or rendered as the same script: the same lines, the same words on each line (shell
parsing), the same ``#SBATCH`` header, ``bash -n`` clean; and nothing ran (no marker file), neither
while rendering nor when the script's ``export`` lines run.
"""

from __future__ import annotations

import shlex
import subprocess

import pytest

from dsv3_recipes.cli import main
from dsv3_recipes.launch import executors
from dsv3_recipes.launch import submit as launch
from dsv3_recipes.launch.submit import SlurmOptions, build_task, recipe_of, render_launch
from dsv3_recipes.recipe.schema import RecipeError

# {m}: the marker file that exists afterwards only if something ran.
HOSTILE = (
    "x;touch {m};",
    "x$(touch {m})",
    "x`touch {m}`",
    "x\ntouch {m}",
    "x --privileged",
    "x' ; touch {m} '",
)
# (what is set, how: a recipe override or a Slurm option, a benign value of the same shape, the field a
# refusal names)
RECIPE_FIELDS = [
    ("name", "x", "name"),
    ("env_vars.NCCL_DEBUG", "INFO", "env_vars.NCCL_DEBUG"),  # quoted where rendered; a newline refused
    ("dataset.data_cache_path", "/lustre/x", "dataset.data_cache_path"),
    ("checkpoint.save", "/lustre/x", "checkpoint.save"),
    ("logger.tensorboard_dir", "/lustre/x", "logger.tensorboard_dir"),
    ("output_dir", "/lustre/x", "output_dir"),
    ("mlperf.log_file", "/lustre/x", "mlperf.log_file"),
    ("tokenizer.tokenizer_model", "/lustre/x", "tokenizer.tokenizer_model"),
]
SLURM_OPTIONS = [
    ("account", "x", "--account"),
    ("partition", "x", "--partition"),
    ("time", "10", "--time"),
    ("container_image", "reg.example.com/x", "--container-image"),
    ("container_mounts", "/lustre/x:/lustre/x", "--container-mounts"),
    ("bindpcie", "/usr/local/bin/x", "--bindpcie"),
    ("mpi", "x", "--mpi"),
    ("additional_parameters", "x", "ADDITIONAL_SLURM_PARAMS"),
    ("additional_parameters_key", "x", "ADDITIONAL_SLURM_PARAMS"),
]


@pytest.fixture(autouse=True)
def nemo_run_home(tmp_path, monkeypatch):
    from nemo_run import config

    monkeypatch.setenv("NEMORUN_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(config, "_NEMORUN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DSV3_IMAGE_REGISTRY", "reg.example.com/team")


def hostile_value(template: str, marker: str, benign: str) -> str:
    value = template.format(m=marker)
    return "/lustre/" + value if benign.startswith("/") else value


def slurm_script(overrides: list[str], **options) -> str:
    task = build_task("proxy_1gpu", overrides)
    recipe = recipe_of(task)
    slurm = SlurmOptions(**({"account": "acct", "partition": "batch"} | options))
    return render_launch(task, launch.make_executor("slurm", recipe, slurm), recipe.name)


def shape(script: str) -> list[object]:
    """The script as the shell reads it: words per line, and the #SBATCH header's options in order."""
    lines = script.splitlines()
    header = [line.split("=")[0] for line in lines if line.startswith("#SBATCH")]
    first = next(i for i, line in enumerate(lines) if line.startswith("#SBATCH"))
    body = lines[first : first + len(header)]
    assert all(line.startswith("#SBATCH") for line in body), "the #SBATCH header is broken"
    return [header, [len(shlex.split(line, comments=True)) for line in lines]]


def same_script(script: str, baseline: str, tmp_path, marker) -> None:
    assert shape(script) == shape(baseline)
    checked = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True, check=False)
    assert checked.returncode == 0, checked.stderr
    exports = "\n".join(line for line in script.splitlines() if line.startswith("export "))
    subprocess.run(["bash", "-c", exports], cwd=tmp_path, check=True)  # the exports run: nothing else may
    assert not marker.exists()


def render_case(kind: str, key: str, value: str) -> str:
    if kind == "recipe":  # an env var's value is taken as text, the other fields as Python literals
        override = f"{key}={value}" if key.startswith("env_vars.") else f"{key}={value!r}"
        return slurm_script([override])
    if key == "container_mounts":
        return slurm_script([], container_mounts=[value])
    if key == "additional_parameters":
        return slurm_script([], additional_parameters={"comment": value})
    if key == "additional_parameters_key":
        return slurm_script([], additional_parameters={value: "1"})
    return slurm_script([], **{key: value})


CASES = [("recipe", *f) for f in RECIPE_FIELDS] + [("slurm", *f) for f in SLURM_OPTIONS]


@pytest.mark.parametrize("template", HOSTILE)
@pytest.mark.parametrize(("kind", "key", "benign", "field"), CASES, ids=[c[1] for c in CASES])
def test_a_hostile_value_is_refused_or_renders_the_same_script(kind, key, benign, field, template, tmp_path):
    marker = tmp_path / "ran"
    baseline = render_case(kind, key, benign)
    value = hostile_value(template, str(marker), benign)
    try:
        script = render_case(kind, key, value)
    except RecipeError as e:
        assert e.path.startswith(field) and "\n" not in str(e), str(e)
    else:
        same_script(script, baseline, tmp_path, marker)
        if key.startswith("env_vars."):  # rendered: the value arrives as given
            exports = [
                shlex.split(line) for line in script.splitlines() if line.startswith("export NCCL_DEBUG=")
            ]
            assert exports == [["export", f"NCCL_DEBUG={value}"]]
    assert not marker.exists()


@pytest.mark.parametrize("template", HOSTILE)
@pytest.mark.parametrize(
    ("argument", "benign"),
    [
        ("account", "x"),
        ("partition", "x"),
        ("time", "10"),
        ("container_image", "reg.example.com/x"),
        ("mpi", "x"),
        ("bindpcie", "/usr/local/bin/x"),
        ("ssh_host", "x"),
        ("ssh_user", "x"),
    ],
)
def test_the_python_executor_refuses_hostile_arguments(argument, benign, template, tmp_path):
    """``executors.slurm(...)`` from a notebook: the same rule, naming ``executor.<argument>``."""
    marker = tmp_path / "ran"
    kwargs = {"account": "acct", argument: hostile_value(template, str(marker), benign)}
    if argument == "ssh_user":
        kwargs["ssh_host"] = "login"
    with pytest.raises(RecipeError) as err:
        executors.slurm(**kwargs)
    assert err.value.path == f"executor.{argument}" and "\n" not in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("template", HOSTILE)
def test_python_executor_env_values_are_quoted(template, tmp_path):
    marker = tmp_path / "ran"
    value = template.format(m=marker)
    task = build_task("proxy_1gpu")
    recipe = recipe_of(task)
    if "\n" in value:
        with pytest.raises(RecipeError, match=r"^env_vars.NCCL_DEBUG: .* holds a newline"):
            executors.slurm(account="acct", gpus_per_node=1, env_vars={"NCCL_DEBUG": value})
        return
    executor = executors.slurm(account="acct", gpus_per_node=1, env_vars={"NCCL_DEBUG": value})
    script = render_launch(task, executor, recipe.name)
    baseline = render_launch(
        task, executors.slurm(account="acct", gpus_per_node=1, env_vars={"NCCL_DEBUG": "x"}), recipe.name
    )
    same_script(script, baseline, tmp_path, marker)


def test_a_dry_run_with_a_hostile_name_runs_nothing(tmp_path, capsys):
    """Issue 27's first: the job directory's mkdir on the login node ran ``touch``."""
    marker = tmp_path / "p"
    argv = [
        "pretrain",
        "-f",
        "proxy_1gpu",
        "-e",
        "slurm",
        "--account",
        "A",
        "--dryrun",
        f"name=x;touch {marker};",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("dsv3: error: name: ")
    assert not marker.exists()
    job_dir = ["pretrain", "-f", "proxy_1gpu", "-e", "slurm", "--account", "A", "--dryrun"]
    assert main([*job_dir, "--job-dir", f"{tmp_path}/j;touch {marker}"]) == 2
    assert capsys.readouterr().err.startswith("dsv3: error: --job-dir: ")
    assert not marker.exists()


def test_a_nemo_run_home_with_shell_characters_is_refused_before_its_mkdir(tmp_path, monkeypatch, capsys):
    from nemo_run import config

    marker = tmp_path / "ran"
    monkeypatch.setattr(config, "_NEMORUN_HOME", f"{tmp_path}/h;touch {marker}")
    assert main(["pretrain", "-f", "proxy_1gpu", "-e", "slurm", "--account", "A", "--dryrun"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"dsv3: error: NEMORUN_HOME: '{tmp_path}/h;touch {marker}': a path of letters, digits and ._/+@=~- "
        "(no spaces or shell characters)"
    ]
    assert not marker.exists()
