"""The Recipe data model: types are enforced and overrides name the field they break."""

import fiddle as fdl
import pytest

from dsv3_recipes import recipes
from dsv3_recipes.launch.submit import build_task, recipe_of
from dsv3_recipes.recipe.schema import RecipeError, check_types


def test_override_reaches_the_recipe():
    recipe = recipe_of(
        build_task("proxy_1gpu", ["train.global_batch_size=16", "model.recompute_modules=['mlp']"])
    )
    assert recipe.train.global_batch_size == 16
    assert recipe.model.recompute_modules == ["mlp"]


def test_optional_override_accepts_none():
    recipe = recipe_of(build_task("proxy_1gpu", ["model.q_lora_rank=None"]))
    assert recipe.model.q_lora_rank is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.no_such_field=1", "model.no_such_field: unknown field of model; allowed: num_layers"),
        ("bogus.x=1", "bogus.x: unknown field of recipe; allowed: name, model, train"),
        ("train.global_batch_size=abc", "train.global_batch_size: expected int, got 'abc'"),
        ("train.global_batch_size=1.5", "train.global_batch_size: expected int, got '1.5'"),
        ("model.sequence_parallel=maybe", "model.sequence_parallel: expected bool"),
        (
            "model.moe_token_dispatcher_type=nccl",
            "model.moe_token_dispatcher_type: expected one of 'alltoall', 'allgather', 'flex'",
        ),
        ("model.num_layers.x=3", "model.num_layers: int has no fields"),
        ("train.global_batch_size", "train.global_batch_size: overrides are key=value"),
    ],
)
def test_bad_overrides_name_the_field(override, message):
    with pytest.raises(RecipeError) as err:
        build_task("proxy_1gpu", [override])
    assert str(err.value).startswith(message)


def test_building_refuses_python_assignments():
    task = recipes.get("proxy_1gpu")
    task.recipe.optimizer.lr = "0.1"  # a notebook typo: a string where a float belongs
    with pytest.raises(RecipeError, match=r"^optimizer.lr: expected float or None, got str '0.1'"):
        fdl.build(task.recipe)  # the section checks itself when fiddle builds it


def test_check_types_catches_edits_of_a_built_recipe():
    recipe = recipe_of(recipes.get("proxy_1gpu"))
    recipe.train.global_batch_size = "16"
    with pytest.raises(RecipeError, match=r"^train.global_batch_size: expected int, got str '16'"):
        check_types(recipe)


def test_unknown_factory_lists_the_known_ones():
    allowed = r"allowed: b200_bf16_256gpu, .*proxy_1gpu, .*torchtitan_bf16$"
    with pytest.raises(RecipeError, match=rf"^factory: unknown recipe 'nope'; {allowed}"):
        recipes.get("nope")
