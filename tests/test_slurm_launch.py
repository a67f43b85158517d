"""The Slurm launch without a cluster: the sbatch script mounts what the recipe reads and writes,
renders only the directives asked for, a dry run is exactly the script, the job checks its code, and a
job that fails is a failed command (a real local job here; tests/test_slurm_cluster.py submits)."""

import os
import re
import subprocess
import sys

import nemo_run as run
import pytest
from test_conversion_checks import write_checkpoint
from test_mlperf_launch import data_dir  # noqa: F401  (a fixture)
from test_plan import RECIPES_671B as PLANNED_671B

from dsv3_recipes.cli import main
from dsv3_recipes.launch import code_check, executors, job_paths
from dsv3_recipes.launch import submit as launch
from dsv3_recipes.launch.submit import LaunchOptions, SlurmOptions, build_task, recipe_of, render_launch
from dsv3_recipes.recipe.schema import RecipeError

IMAGE = "registry.example.com/team/dsv3-recipes:test"
RECIPES_671B = [*PLANNED_671B, "torchtitan_bf16", "mlperf_gb300_256gpu", "mlperf_h100_1024gpu"]
# Every path field a recipe reads or writes, each under its own top-level directory.
READS = {
    "dataset.data_paths": "['0.3', '/data/c4/a_text_document', '0.7', '/data2/c4/b_text_document']",
    "dataset.validation_paths": "['/valid/c4/v_text_document']",
    "tokenizer.tokenizer_model": "/tok/dsv3",
    "checkpoint.load": "/ckpt_in/run/latest",
    "checkpoint.pretrained_checkpoint": "/hf/converted/dsv3",
}
WRITES = {
    "checkpoint.save": "/ckpt/run1",
    "logger.tensorboard_dir": "/tb/run1",
    "dataset.data_cache_path": "/cache/npy",
    "output_dir": "/results/run1",
    "mlperf.log_file": "/mllog/run1/mlperf_log.txt",
}


def sbatch(name, *overrides, mounts=(), **options):
    task = build_task(name, overrides)
    recipe = recipe_of(task)
    slurm = SlurmOptions(account="acct", container_image=IMAGE, container_mounts=list(mounts), **options)
    return render_launch(task, launch.make_executor("slurm", recipe, slurm), recipe.name)


def srun_line(script):
    return next(line for line in script.splitlines() if line.startswith("srun "))


def mount_destinations(script):
    mounts = re.search(r"--container-mounts (\S+)", srun_line(script)).group(1).split(",")
    return [job_paths.mount_destination(m) for m in mounts]


def seed_003_env(monkeypatch, name):
    """torchtitan_bf16 reads seed 003's knobs; every other recipe refuses a GPU_TYPE not its own."""
    if name == "torchtitan_bf16":
        monkeypatch.setenv("GPU_TYPE", "h100")
    else:
        monkeypatch.delenv("GPU_TYPE", raising=False)


def mlperf_reads(files):
    """The MLPerf recipes read the benchmark's files, which must exist on the login node (its rules)."""
    return {
        "dataset.data_paths": f"['{files}/c4-train.en_6_text_document']",
        "dataset.validation_paths": f"['{files}/c4-validation-91205-samples.en_text_document']",
        "tokenizer.tokenizer_model": f"{files}/tokenizer",
        "checkpoint.pretrained_checkpoint": f"{files}/ckpt",
    }


def test_every_671b_sbatch_mounts_what_it_reads_and_writes(monkeypatch, data_dir):  # noqa: F811
    for name in RECIPES_671B:
        reads = mlperf_reads(data_dir) if name.startswith("mlperf_") else READS
        overrides = [f"{key}={value}" for key, value in (reads | WRITES).items()] + [
            "logger.wandb_project=None"
        ]
        paths = [p for value in reads.values() for p in re.findall(r"'?(/[^',\]]+)", value)]
        paths += list(WRITES.values())
        seed_003_env(monkeypatch, name)
        script = sbatch(name, *overrides)
        inside = mount_destinations(script)
        for path in paths:
            assert any(path == d or path.startswith(d + "/") for d in inside), (name, path, inside)
        mkdir = next(line for line in script.splitlines() if line.startswith("mkdir -p "))
        assert mkdir.split()[2:] == sorted(
            ["/cache/npy", "/ckpt/run1", "/mllog/run1", "/results/run1", "/tb/run1"]
        )
        assert script.index(mkdir) < script.index(srun_line(script))  # bind sources exist before srun


def test_a_users_mount_covers_its_paths_and_relative_inputs_are_refused():
    script = sbatch(
        "proxy_1gpu", "dataset.mock=False", "dataset.data_paths=['/lustre/c4/a']", mounts=["/fs:/lustre"]
    )
    assert mount_destinations(script)[:1] == ["/lustre"] and "/lustre/c4:/lustre/c4" not in script
    assert "mkdir -p" not in script  # output_dir is relative: it lands in the mounted job directory
    with pytest.raises(
        RecipeError, match=r"dataset.data_paths: c4/a is relative: a Slurm job runs in its job"
    ):
        sbatch("proxy_1gpu", "dataset.mock=False", "dataset.data_paths=['c4/a']")
    hub = sbatch("proxy_1gpu", "tokenizer.tokenizer_model=deepseek-ai/DeepSeek-V3")  # a hub id, not a path
    assert "deepseek-ai" not in srun_line(hub)


def test_multi_node_runs_that_save_need_an_absolute_checkpoint_dir():
    data = "dataset.data_paths=['/lustre/c4_text_document']", "logger.wandb_project=None"
    relative_at_the_end = ["checkpoint.save=ckpt", "checkpoint.save_interval=None"]
    for save in ([], ["checkpoint.save=ckpt"], relative_at_the_end):
        with pytest.raises(RecipeError, match=r"checkpoint.save: .* while the run saves .* on 64 nodes"):
            sbatch("gb200_mxfp8_256gpu", *data, *save)
    assert "/lustre/ckpt" in sbatch("gb200_mxfp8_256gpu", *data, "checkpoint.save=/lustre/ckpt")
    assert sbatch(
        "gb200_mxfp8_256gpu", *data, "checkpoint.save_interval=None"
    )  # saves nothing: no dir needed
    assert sbatch("proxy_1gpu", "checkpoint.save_interval=10")  # one node: output_dir/checkpoints is fine


def test_gpus_per_node_directive_follows_the_flag_or_sbatch_gpus_per_node():
    assert "--gpus-per-node" not in sbatch("proxy_8gpu_ep8")  # seed 003: "ignore if not configured"
    args = main.__globals__["parser"]().parse_args(["pretrain", "-f", "proxy_8gpu_ep8", "-e", "slurm"])
    options = SlurmOptions.from_args_and_env(args, {"SBATCH_GPUS_PER_NODE": "8"})
    assert options.gres_gpus_per_node == 8
    assert "#SBATCH --gpus-per-node=8" in sbatch("proxy_8gpu_ep8", gres_gpus_per_node=8)
    with pytest.raises(RecipeError, match="executor.gres_gpus_per_node: 4 GPUs per node for 8 ranks"):
        sbatch("proxy_8gpu_ep8", gres_gpus_per_node=4)


def test_pmix_only_when_asked_and_bindpcie_in_front_of_the_rank():
    plain = srun_line(sbatch("proxy_1gpu"))
    assert "--mpi" not in plain and " python -m nemo_run.core.runners.fdl_runner " in plain
    wrapped = srun_line(sbatch("proxy_1gpu", mpi="pmix", bindpcie="/opt/bindpcie"))
    assert "--mpi=pmix" in wrapped and " /opt/bindpcie python -m nemo_run.core.runners.fdl_runner " in wrapped


def test_segment_is_rendered_for_nvl72_recipes():
    """Slurm 22.05 lacks --segment: tests/test_slurm_cluster.py submits the rest with --test-only."""
    script = sbatch(
        "gb200_mxfp8_256gpu",
        "dataset.data_paths=['/d/c4']",
        "checkpoint.save=/ckpt",
        "logger.wandb_project=None",
    )
    assert "#SBATCH --segment=8" in script
    assert "--segment" not in sbatch(
        "h100_bf16_512gpu", "dataset.data_paths=['/d/c4']", "checkpoint.save=/ckpt"
    )


def test_dryrun_prints_exactly_the_script_or_writes_it(tmp_path, capsys):
    argv = ["pretrain", "-f", "proxy_1gpu", "-e", "slurm", "--account", "acct", "--container-image", IMAGE]
    assert main([*argv, "--dryrun"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("#!/bin/bash\n") and out.rstrip().endswith("fi")
    assert "Entering Experiment" in err and "Entering Experiment" not in out  # NeMo-Run's banner: stderr
    target = tmp_path / "job.sh"
    assert main([*argv, "--dryrun-to", str(target)]) == 0
    second, err = capsys.readouterr()
    assert second == "" and f"wrote the launch to {target}" in err

    def same(script):  # each render is a new experiment id
        return re.sub(r"proxy_1gpu[_-]\d+", "ID", script)

    assert same(target.read_text()) == same(out)


def test_job_dir_without_ssh_is_nemo_runs_home_for_the_launch(tmp_path, capsys):
    home = tmp_path / "jobs"
    argv = ["pretrain", "-f", "proxy_1gpu", "-e", "slurm", "--account", "a", "--container-image", IMAGE]
    assert main([*argv, "--job-dir", str(home), "--dryrun"]) == 0
    script = capsys.readouterr().out
    assert f"--output={home}/experiments/proxy_1gpu/proxy_1gpu_" in script  # where the sbatch file is too
    with pytest.raises(RecipeError, match="executor.job_dir: only with ssh_host"):
        executors.slurm(account="a", job_dir="/somewhere")


def test_detach_is_for_slurm_only(capsys):
    assert main(["pretrain", "-f", "proxy_1gpu", "--detach", "--dryrun"]) == 2
    assert "--detach: only a Slurm job runs detached" in capsys.readouterr().err


def test_the_job_refuses_other_code_than_the_launchers(tmp_path, monkeypatch):
    tree = tmp_path / "dsv3_recipes"
    tree.mkdir()
    (tree / "a.py").write_text("x = 1\n")
    before = code_check.fingerprint((tree,))
    (tree / "a.py").write_text("x = 2\n")
    assert code_check.fingerprint((tree,)) != before

    env = code_check.launcher_env()
    assert f"export DSV3_LAUNCHER_CODE={env['DSV3_LAUNCHER_CODE']}" in sbatch("proxy_1gpu")
    monkeypatch.setenv("DSV3_LAUNCHER_CODE", env["DSV3_LAUNCHER_CODE"])
    code_check.check()  # the same code: passes
    monkeypatch.setenv("DSV3_LAUNCHER_CODE", "0.0.9:0123456789abcdef")
    from dsv3_recipes.train.entry import pretrain

    with pytest.raises(RuntimeError, match=r"\(0.1.0:[0-9a-f]{16}\) is not the launcher's \(0.0.9:0123"):
        pretrain(recipe_of(build_task("proxy_1gpu")))  # first thing in the train entry, before torch


def test_a_failed_local_job_is_a_failed_command_with_its_state_and_log(tmp_path, monkeypatch, capsys):
    """A real NeMo-Run job on this machine whose task raises: JobFailed names the state, the log tail
    is printed (the task is the code check, told another launcher's code)."""
    monkeypatch.setenv("NEMORUN_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")  # its `python`
    from nemo_run import config

    monkeypatch.setattr(config, "_NEMORUN_HOME", str(tmp_path))
    executor = run.LocalExecutor(env_vars={"DSV3_LAUNCHER_CODE": "0.0.9:0123456789abcdef"})
    with pytest.raises(launch.JobFailed, match=r"^check-job: job \S+ FAILED \(the log tail is above;"):
        launch.run_task(run.Partial(code_check.check), executor, "check-job", LaunchOptions())
    assert "is not the launcher's (0.0.9:0123456789abcdef)" in capsys.readouterr().err


def test_to_yaml_writes_the_resolved_task_and_runs_nothing(tmp_path, capsys):
    """NeMo-Run's YAML of the task (its serializer, as `nemo ... --to-yaml` writes it)."""
    import yaml

    assert main(["show", "proxy_1gpu", "train.global_batch_size=16", "--to-yaml", "-"]) == 0
    task = yaml.safe_load(capsys.readouterr().out)
    assert task["_target_"] == "dsv3_recipes.train.entry.pretrain" and task["_partial_"]
    recipe = task["recipe"]
    assert (recipe["name"], recipe["train"]["global_batch_size"]) == ("proxy_1gpu", 16)
    assert recipe["env_vars"]["NCCL_GRAPH_REGISTER"] == "0"  # strings stay strings
    target = tmp_path / "task.yaml"
    argv = ["pretrain", "-f", "proxy_1gpu", "-e", "slurm", "train.train_iters=7", "--to-yaml", str(target)]
    assert main(argv) == 0  # no account, no submission: only the export
    assert yaml.safe_load(target.read_text())["recipe"]["train"]["train_iters"] == 7


LOAD_BACK = """
import sys
from nemo_run.cli.config import ConfigSerializer
from dsv3_recipes.launch import submit as launch
loaded = ConfigSerializer().deserialize_yaml(sys.stdin.read())
assert launch.recipe_of(loaded) == launch.recipe_of(launch.recipe_task(sys.argv[1])), sys.argv[1]
"""


# A recipe unlike the default factory's in unset fields, one with numeric env values, one with None
# fields that the default factory sets (train_samples, recompute). One load per process: NeMo-Run
# 0.11.1's loader turns a dict field into a Config and carries its keys into the next load.
@pytest.mark.parametrize("name", ["proxy_1gpu_stock", "gb200_mxfp8_256gpu", "mlperf_gb300_256gpu"])
def test_to_yaml_loads_back_through_nemo_run_as_the_same_recipe(name, capsys):
    """NeMo-Run's loader fills unset fields from the default factory and reads '32' as 32: the export
    sets every field and the recipe takes numeric env values as text."""
    assert main(["show", name, "--to-yaml", "-"]) == 0
    text = capsys.readouterr().out
    loaded = subprocess.run(
        [sys.executable, "-c", LOAD_BACK, name], input=text, text=True, capture_output=True
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]


def test_recipes_are_nemo_run_factories(monkeypatch):
    from importlib import metadata

    from dsv3_recipes import recipes

    (entry,) = [e for e in metadata.entry_points(group="nemo_run.cli") if e.name == "dsv3"]
    assert set(entry.load()) == set(recipes.names())  # what NeMo-Run's tooling loads
    assert {f.__name__ for f in run.cli.list_factories("dsv3")} >= {"proxy_1gpu", "torchtitan_bf16_from_env"}
    for name in recipes.names():
        seed_003_env(monkeypatch, name)
        factory = run.cli.resolve_factory("dsv3", name)
        assert recipe_of(factory()).name == recipe_of(recipes.get(name)).name


def test_a_submission_at_a_terminal_asks_first_and_yes_skips_it(monkeypatch, capsys):
    import typer

    asked = []
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(typer, "confirm", lambda text, **_: asked.append(text) or False)
    argv = ["pretrain", "-f", "proxy_8gpu_ep8", "-e", "slurm", "--account", "a", "--container-image", IMAGE]
    assert main(argv) == 2  # declined: nothing submitted
    assert asked == ["Submit proxy_8gpu_ep8: 1 node(s) x 8 task(s), 04:00:00, account a?"]
    assert "--yes: not submitted" in capsys.readouterr().err
    monkeypatch.setattr(launch.run, "Experiment", None)  # --yes goes straight to the submission
    with pytest.raises(TypeError):
        main([*argv, "--yes"])
    assert len(asked) == 1


SLURM = ["-e", "slurm", "--account", "acct", "--container-image", IMAGE]


@pytest.mark.parametrize(
    ("flag", "bad"),
    [
        ("--time", "4h"),
        ("--time", "1-2:3:4:5"),
        ("--dependency", "afterok"),
        ("--dependency", "afterok:12,afterany:x"),
        ("--dependency", "afterok:1,afterok:2?afterok:3"),
        ("--qos", "high;rm"),
        ("--array", "0-"),
        ("--array", "5-2"),
        ("--max-restarts", "-1"),
    ],
)
def test_slurm_options_are_refused_outside_slurms_formats(flag, bad, capsys):
    assert main(["pretrain", "-f", "proxy_1gpu", *SLURM, flag, bad, "--dryrun"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"dsv3: error: {flag}: ")


def test_slurm_options_render_as_sbatch_directives(capsys):
    good = ["--time", "1-12", "--qos", "long", "--dependency", "afterok:12:13?afterany:14", "--array", "0-2"]
    assert main(["pretrain", "-f", "proxy_1gpu", *SLURM, *good, "--dryrun"]) == 0
    script = capsys.readouterr().out
    for line in ("--time=1-12", "--qos=long", "--dependency='afterok:12:13?afterany:14'", "--array=0-2"):
        assert f"#SBATCH {line}\n" in script
    assert "#SBATCH --requeue" not in script and "TORCHX_MAX_RETRIES=0" in script
    for time in ("30", "30:00", "04:00:00", "2-0", "2-04:00", "2-04:00:00"):
        assert executors.slurm(account="a", time=time).time == time
    with pytest.raises(
        RecipeError, match=r"^executor.time: '4h' is not a Slurm time limit; use one of MM, MM:SS"
    ):
        executors.slurm(account="a", time="4h")
    with pytest.raises(RecipeError, match=r"^executor.time: '0:00': a job needs a time limit above zero$"):
        executors.slurm(account="a", time="0:00")
    assert main(["pretrain", "-f", "proxy_1gpu", *SLURM, "--time", "4h", "--dryrun"]) == 2
    assert capsys.readouterr().err.strip().startswith("dsv3: error: --time: '4h' is not a Slurm time limit")


def test_a_submission_from_the_login_node_checks_its_data_first(tmp_path, capsys, monkeypatch):
    """The login node sees the cluster's file systems: a dataset that is not there is refused before
    anything is submitted, not after the job's wait in the queue; a dry run, which may be rendered
    anywhere, checks no cluster path (the train-side preflight checks them on the node)."""
    submitted = []
    with monkeypatch.context() as m:
        m.setattr(launch, "run_task", lambda *args: submitted.append(args))
        missing = [f"dataset.data_paths=['{tmp_path}/c4_text_document']"]
        assert main(["pretrain", "-f", "proxy_1gpu", *SLURM, "--yes", *missing]) == 2
    assert submitted == []
    err = capsys.readouterr().err.strip()
    assert err == f"dsv3: error: dataset.data_paths: {tmp_path}/c4_text_document.bin does not exist"
    assert main(["pretrain", "-f", "proxy_1gpu", *SLURM, "--dryrun", *missing]) == 0


def test_the_job_name_starts_with_the_task_and_a_short_experiment_id(capsys):
    assert main(["pretrain", "-f", "proxy_1gpu", *SLURM, "--dryrun"]) == 0
    script = capsys.readouterr().out
    exp_id = re.search(r"/experiments/proxy_1gpu/(proxy_1gpu_\d+)/", script).group(1)
    assert f"#SBATCH --job-name=proxy_1gpu-{exp_id[-6:]}\n" in script


def test_requeue_resumes_from_the_directory_it_saves_into(capsys):
    saving = ["checkpoint.save=/lustre/ckpt", "checkpoint.save_interval=50"]
    task = build_task("proxy_1gpu", saving)
    resumed = launch.resumable(task, recipe_of(task))
    assert recipe_of(resumed).checkpoint.load == "/lustre/ckpt" and recipe_of(task).checkpoint.load is None
    own = build_task("proxy_1gpu", ["checkpoint.save_interval=50"])  # saves under output_dir
    assert recipe_of(launch.resumable(own, recipe_of(own))).checkpoint.load == "nemo_experiments/checkpoints"
    assert main(["pretrain", "-f", "proxy_1gpu", *SLURM, "--requeue", *saving, "--dryrun"]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --requeue\n" in script
    argv = ["pretrain", "-f", "proxy_1gpu", *SLURM, "--dryrun"]
    assert main([*argv, "--max-restarts", "3"]) == 2  # nothing saved: it would start over
    assert "checkpoint.save_interval: unset while the job may start again" in capsys.readouterr().err
    assert main([*argv, "--requeue", *saving, "checkpoint.load=/lustre/other"]) == 2
    assert "checkpoint.load: /lustre/other is not the directory the job saves into" in capsys.readouterr().err
    assert main([*argv, "--max-restarts", "3", *saving]) == 0
    assert "export TORCHX_MAX_RETRIES=3\n" in capsys.readouterr().out  # NeMo-Run's requeue on failure


def test_an_array_is_followed_detached(capsys):
    assert main(["pretrain", "-f", "proxy_1gpu", *SLURM, "--array", "0-2", "--yes"]) == 2
    assert "--array: an array's tasks are followed with --detach" in capsys.readouterr().err


def test_an_unreachable_ssh_host_is_one_line(tmp_path, capsys):
    argv = [
        "pretrain",
        "-f",
        "proxy_1gpu",
        *SLURM,
        "--ssh-host",
        "nosuch.invalid",
        "--job-dir",
        "/j",
        "--yes",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dsv3: error: --ssh-host: cannot reach nosuch.invalid: ")


def test_preprocess_and_convert_on_slurm_mount_absolute_paths_in_pretrains_image(
    tmp_path, capsys, monkeypatch
):
    from dsv3_recipes.recipe.images import image_for

    monkeypatch.setenv("DSV3_IMAGE_REGISTRY", "registry.example.com/team")  # where build.sh pushed them
    argv = ["preprocess", "-i", "/raw/c4/c4-train.*.json.gz", "-i", "/raw2/v.json", "-o", "/data/c4/train"]
    argv += ["--tokenizer", "/tok/dsv3", "-e", "slurm", "--account", "acct", "--dryrun"]
    assert main(argv) == 0
    script = capsys.readouterr().out
    assert mount_destinations(script)[:-1] == ["/data/c4", "/raw", "/raw2", "/tok"]  # then the job dir
    assert f"--container-image {image_for('h100')} " in srun_line(script)
    assert "mkdir -p /data/c4\n" in script
    for flag, field, path, shown in [
        ("-i", "--input", "raw/x.json", "raw"),
        ("-o", "--output-prefix", "out/train", "out/train"),
        ("--tokenizer", "--tokenizer", "tok", "tok"),
    ]:
        changed = list(argv)
        changed[changed.index(flag) + 1] = path
        assert main(changed) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"dsv3: error: {field}: {shown} is relative: a Slurm job runs in its job directory"]
    hf = tmp_path / "hf"
    write_checkpoint(hf)
    convert = ["convert", "import", "--hf-path", str(hf), "--megatron-path", str(tmp_path / "mg" / "out")]
    assert main([*convert, "-e", "slurm", "--account", "acct", "--dryrun"]) == 0
    script = capsys.readouterr().out
    assert f"{tmp_path}:{tmp_path}" in srun_line(script) and f"mkdir -p {tmp_path}/mg\n" in script
    assert f"--container-image {image_for('h100')} " in srun_line(script)
    assert main(["convert", "import", "--hf-path", "hf", "--megatron-path", "/mg", *SLURM, "--dryrun"]) == 2
    assert "--hf-path: hf must be an absolute path" in capsys.readouterr().err
