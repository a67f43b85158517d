"""A shared task file is data: loading it (``recipes.task.load_yaml``) imports and builds only recipe
types, and a config that names anything else is refused before fiddle builds it (``recipe_of``,
``run.run``), in one line naming where."""

from __future__ import annotations

import os
from pathlib import Path

import nemo_run as run
import pytest

from dsv3_recipes import recipes
from dsv3_recipes.cli import main
from dsv3_recipes.launch import executors
from dsv3_recipes.launch.submit import recipe_of
from dsv3_recipes.recipe.schema import RecipeError
from dsv3_recipes.recipes.task import load_yaml


@pytest.fixture(scope="module")
def task_yaml() -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["show", "proxy_1gpu", "train.train_iters=7", "--to-yaml", "-"]) == 0
    return out.getvalue()


def test_a_task_file_loads_back(task_yaml):
    recipe = recipe_of(load_yaml(task_yaml))
    assert (recipe.name, recipe.train.train_iters) == ("proxy_1gpu", 7)


def marker_yaml(task_yaml: str, marker) -> list[tuple[str, str]]:
    """Task files that would run ``touch marker`` if loading one ran code."""
    touch = f"_target_: os.system\n    command: 'touch {marker}'"
    return [
        (
            task_yaml.replace("_target_: dsv3_recipes.recipe.schema.CheckpointConfig", touch),
            "recipe.checkpoint",
        ),
        (task_yaml.replace("_target_: dsv3_recipes.train.entry.pretrain", "_target_: os.system"), "_target_"),
        (
            task_yaml.replace("_target_: dsv3_recipes.recipe.schema.Recipe", "_target_: subprocess.run"),
            "recipe",
        ),
        (f"!!python/object/apply:os.system ['touch {marker}']\n", "task"),
        (f"_target_: os.system\n_partial_: true\ncommand: touch {marker}\n", "_target_"),
        ("[1, 2\n", "task"),
        ("", "_target_"),
        (task_yaml.replace("train_iters: 7", "train_iters: abc"), "recipe.train.train_iters"),
        (task_yaml.replace("train_iters: 7", "bogus_field: 7"), "recipe.train.bogus_field"),
        (task_yaml.replace("  name: proxy_1gpu", "  name: [1]"), "recipe.name"),
    ]


def test_a_task_file_naming_other_code_is_refused_before_anything_runs(task_yaml, tmp_path):
    marker = tmp_path / "ran"
    readme = (Path(__file__).parent / "README.md").read_text()
    assert f"sends {len(marker_yaml(task_yaml, marker))} bad task files" in readme
    for text, field in marker_yaml(task_yaml, marker):
        with pytest.raises(RecipeError) as err:
            load_yaml(text)
            pytest.fail(f"loaded: {field}")
        assert err.value.path == field and "\n" not in str(err.value), (field, str(err.value))
        assert not marker.exists()


def test_a_config_naming_other_code_is_refused_before_it_is_built(tmp_path):
    """A task deserialized some other way (NeMo-Run's own loader) reaches ``recipe_of`` or ``run.run``:
    fiddle would call ``os.system`` when it builds the recipe."""
    marker = tmp_path / "ran"
    task = recipes.get("proxy_1gpu")
    task.recipe.checkpoint = run.Config(os.system, f"touch {marker}")
    with pytest.raises(RecipeError, match=r"^checkpoint: posix.system is not a recipe type"):
        recipe_of(task)
    with pytest.raises(Exception, match="Unserializable value <built-in function system>"):
        run.run(task, executor=executors.local(gpus=1), dryrun=True)  # NeMo-Run's own check, first
    task = recipes.get("proxy_1gpu")
    task.recipe = run.Config(os.system, f"touch {marker}")
    with pytest.raises(RecipeError, match=r"^recipe: expected a run.Config of Recipe"):
        recipe_of(task)
    assert not marker.exists()


def test_run_run_compares_the_executor_with_the_recipe(tmp_path, monkeypatch):
    """Issue 27: the 256-GPU recipe rendered on one node through ``run.run``."""
    monkeypatch.setenv("NEMORUN_HOME", str(tmp_path))
    task = recipes.get("proxy_1gpu")
    with pytest.raises(
        RecipeError, match=r"^executor: 1 node\(s\) x 2 GPU\(s\) for recipe proxy_1gpu, .* = 1 GPUs"
    ):
        run.run(task, executor=executors.local(gpus=2), dryrun=True)
    task = recipes.get("gb200_mxfp8_256gpu")
    task.recipe.checkpoint.save = "/lustre/ckpt"
    task.recipe.dataset.data_paths = ["/lustre/c4_text_document"]
    task.recipe.logger.wandb_project = None
    with pytest.raises(RecipeError, match=r"^executor: 1 node\(s\) x 4 GPU\(s\) .* 64 x 4 = 256 GPUs"):
        run.run(task, executor=executors.slurm(account="a", nodes=1, gpus_per_node=4), dryrun=True)
    run.run(recipes.get("proxy_1gpu"), executor=executors.local(gpus=1), dryrun=True)  # the same size: runs


def test_the_train_entry_compares_the_ranks_it_was_started_with():
    from dsv3_recipes.train.preflight import check_world

    recipe = recipe_of(recipes.get("proxy_1gpu"))
    check_world(recipe, {"WORLD_SIZE": "1"})
    check_world(recipe, {})
    with pytest.raises(
        RecipeError, match=r"^launch.num_nodes: the job runs 8 rank\(s\), recipe proxy_1gpu needs 1"
    ):
        check_world(recipe, {"SLURM_NTASKS": "8"})
