"""Launch side: dry-run rendering, the refusals before submission, and no torch on the login node."""

import json
import subprocess
import sys

import pytest

from dsv3_recipes import recipes
from dsv3_recipes.cli import main
from dsv3_recipes.launch import local_gpus
from dsv3_recipes.launch import submit as launch
from dsv3_recipes.launch.submit import SlurmOptions, build_task, recipe_of, render_launch
from dsv3_recipes.recipe import images

# A login node has no torch: nemo_run's yaml module imports torch opportunistically, so hide it (and the
# rest of the train stack) the way a bare login node would, and check every recipe still plans and renders.
LAUNCH_SIDE_SCRIPT = """
import sys
class LoginNode:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "megatron", "transformer_engine"):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, LoginNode())
import nemo_run as run
from dsv3_recipes import cli, recipes
from dsv3_recipes.launch import executors, submit as launch
from dsv3_recipes.plan import preflight as plan
for name in recipes.RECIPES:
    if name == "torchtitan_bf16":
        continue
    task = launch.build_task(name, ["checkpoint.save=/lustre/ckpt"])  # multi-node saves need a dir
    recipe = launch.recipe_of(task)
    plan.plan(recipe)
    # A plain Partial of the same function and recipe: the 671B recipes lack site paths (data, MLPerf
    # checkpoint) that a recipe task's launch checks demand; rendering is what this script exercises.
    bare = run.Partial(task.__fn_or_cls__, recipe=task.recipe)
    launch.render_launch(bare, executors.for_recipe("slurm", recipe, account="a"), recipe.name)
heavy = sorted(m for m in ("torch", "megatron", "transformer_engine") if m in sys.modules)
print("HEAVY", heavy)
"""


def test_launch_side_never_imports_torch():
    out = subprocess.run(
        [sys.executable, "-c", LAUNCH_SIDE_SCRIPT],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "HEAVY []" in out.stdout


def _slurm_script(name, *overrides, **options):
    task = build_task(name, overrides)
    recipe = recipe_of(task)
    slurm = SlurmOptions(account="acct", partition="batch", **options)
    return render_launch(task, launch.make_executor("slurm", recipe, slurm), recipe.name)


def test_gb200_sbatch_has_segment_bindpcie_env_and_image(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_123")
    monkeypatch.setenv("DSV3_IMAGE_REGISTRY", "reg.example.com/team")
    monkeypatch.setenv("WANDB_API_KEY", "wandb_secret_value_456")  # the recipe logs to W&B
    script = _slurm_script(
        "gb200_mxfp8_256gpu",
        "dataset.data_paths=['/lustre/c4/c4_text_document']",
        "checkpoint.save=/lustre/ckpt",
        gres_gpus_per_node=4,
    )
    assert "#SBATCH --nodes=64" in script and "#SBATCH --ntasks-per-node=4" in script
    assert "#SBATCH --gpus-per-node=4" in script
    assert "#SBATCH --segment=8" in script
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert " /usr/local/bin/bindpcie python -m nemo_run.core.runners.fdl_runner" in srun
    assert "--container-env HF_TOKEN,WANDB_API_KEY" in srun
    assert f"--container-image {images.image_for('gb200', 'reg.example.com/team')} " in srun
    for line in ("export NVLINK_DOMAIN_SIZE=72", "export NCCL_GRAPH_REGISTER=0", "export NVTE_FUSED_ATTN=1"):
        assert line in script
    assert "hf_secret_value_123" not in script and "wandb_secret_value_456" not in script


def test_torchtitan_slurm_env_knobs_reach_the_script(monkeypatch):
    for knob in recipes.torchtitan.KNOBS:
        monkeypatch.delenv(knob, raising=False)
    monkeypatch.setenv("GPU_TYPE", "h100")
    monkeypatch.setenv("DATASET_PATH", "/data/c4_text_document")
    env = {
        "SBATCH_ACCOUNT": "from_env",
        "RUN_CONF_IMAGE": "registry/me/titan:1",
        "RUN_CONF_MOUNTS": "/lustre:/lustre,/data:/data",
        "ADDITIONAL_SLURM_PARAMS": "reservation=my_res;exclusive",
    }
    args = main.__globals__["parser"]().parse_args(["pretrain", "--factory", "torchtitan_bf16"])
    options = SlurmOptions.from_args_and_env(args, env)
    assert options.account == "from_env" and options.container_mounts == ["/lustre:/lustre", "/data:/data"]
    assert options.additional_parameters == {"reservation": "my_res", "exclusive": True}
    task = build_task("torchtitan_bf16")
    recipe = recipe_of(task)
    script = render_launch(task, launch.make_executor("slurm", recipe, options), recipe.name)
    assert "#SBATCH --nodes=64" in script and "#SBATCH --reservation=my_res" in script
    assert "--container-image registry/me/titan:1" in script
    assert "--container-mounts /lustre:/lustre,/data:/data," in script


def test_local_dryrun_renders_torchrun_with_recipe_env(capsys):
    assert main(["pretrain", "--factory", "proxy_1gpu", "--dryrun"]) == 0
    out = capsys.readouterr().out
    assert "torchrun" in out and "--nproc-per-node 1" in out
    assert "export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in out


def test_main_job_without_gpu_fails_fast_pointing_to_dryrun(monkeypatch, capsys):
    monkeypatch.setattr(local_gpus, "count", lambda: 0)
    assert main(["pretrain", "--factory", "proxy_1gpu"]) == 2
    err = capsys.readouterr().err
    assert "needs 1 GPU(s), this machine has 0" in err and "--dryrun" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["pretrain", "--factory", "proxy_1gpu", "--executor", "k8s", "--dryrun"],
            "--executor: unknown executor 'k8s'",
        ),
        (
            ["pretrain", "--factory", "gb200_mxfp8_256gpu", "--executor", "slurm", "--dryrun"],
            "dataset.data_paths: empty",
        ),
        (
            [
                "pretrain",
                "--factory",
                "proxy_1gpu",
                "--dryrun",
                "dataset.mock=False",
                "dataset.data_paths=['/nope/x']",
            ],
            "dataset.data_paths: /nope/x.bin does not exist",
        ),
        (
            ["pretrain", "--factory", "proxy_1gpu", "--dryrun", "env_vars={'WANDB_API_KEY': 'k'}"],
            "env_vars.WANDB_API_KEY: looks like a secret",
        ),
        (
            ["pretrain", "--factory", "proxy_1gpu", "--dryrun", "logger.wandb_project='p'"],
            "logger.wandb_project: is set but WANDB_API_KEY is not exported",
        ),
        (
            ["pretrain", "--factory", "proxy_1gpu", "--executor", "slurm", "--dryrun"],
            "--account: Slurm needs",
        ),
    ],
)
def test_refusals_before_submission(argv, message, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("SBATCH_ACCOUNT", raising=False)
    monkeypatch.delenv("DSV3_IMAGE_REGISTRY", raising=False)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_show_json_is_the_full_resolved_recipe(capsys):
    assert main(["show", "proxy_1gpu", "--json", "train.global_batch_size=32"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["train"]["global_batch_size"] == 32
    assert data["model"]["num_moe_experts"] == 64 and data["launch"]["gpus_per_node"] == 1
    assert set(data) >= {"model", "train", "optimizer", "scheduler", "dataset", "checkpoint", "env_vars"}


def test_list_shows_every_recipe(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in recipes.RECIPES)


def test_indexed_data_that_exists_passes(tmp_path):
    from test_mlperf_launch import write_idx

    prefix = tmp_path / "c4_text_document"
    write_idx(tmp_path / "c4_text_document.idx", [4096, 100])
    (tmp_path / "c4_text_document.bin").write_bytes(b"")
    argv = [
        "pretrain",
        "--factory",
        "proxy_1gpu",
        "--dryrun",
        "dataset.mock=False",
        f"dataset.data_paths=['{prefix}']",
    ]
    assert main(argv) == 0


def test_recipe_task_renders_to_yaml_like_any_partial():
    """NeMo-Run writes <job>_config.yaml with YamlSerializer; the recipe task is a run.Partial there."""
    from nemo_run.core.serialization.yaml import YamlSerializer

    text = YamlSerializer().serialize(recipes.get("proxy_1gpu"))
    assert "_target_: dsv3_recipes.train.entry.pretrain" in text and "_partial_: true" in text
    assert "_target_: dsv3_recipes.recipe.schema.Recipe" in text


def test_local_run_without_the_train_side_is_one_line(on_login_node):
    """A GPU box with only the launch install: the local launch check names the missing train side
    (find_spec('megatron.bridge') raised ModuleNotFoundError there instead)."""
    out = on_login_node(
        "from dsv3_recipes.launch import local_gpus, submit\n"
        "from dsv3_recipes.recipe.schema import RecipeError\n"
        "local_gpus.count = lambda: 8\n"
        "try:\n"
        "    submit.check_local_machine(1, 'recipe proxy_1gpu', 'launch.gpus_per_node')\n"
        "except RecipeError as e:\n"
        "    print('REFUSED', e)\n"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "REFUSED executor: the train side is not installed here" in out.stdout
