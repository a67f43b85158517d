"""train.gc_freeze and train.manual_gc_generation: what Megatron-Bridge lacks (TorchTitan's generation-1
collections, a freeze after set-up), as one override each."""

import types

import pytest

from dsv3_recipes.launch.submit import build_task, recipe_of
from dsv3_recipes.recipe.schema import RecipeError


def test_a_generation_needs_manual_collections():
    with pytest.raises(RecipeError, match="train.manual_gc_generation: 1 given while train.manual_gc=False"):
        recipe_of(build_task("proxy_1gpu", ["train.manual_gc=False", "train.manual_gc_generation=1"]))
    with pytest.raises(RecipeError, match="train.manual_gc_generation"):
        recipe_of(build_task("proxy_1gpu", ["train.manual_gc_generation=3"]))
    recipe = recipe_of(build_task("proxy_1gpu"))
    assert (recipe.train.manual_gc_generation, recipe.train.gc_freeze) == (2, False)  # defaults unchanged


def test_bridge_collects_generation_2_and_leaves_the_others_to_the_callback():
    pytest.importorskip("megatron.bridge", reason="needs the train extra")
    from dsv3_recipes.recipe.resolve import resolve
    from dsv3_recipes.train.callbacks import GarbageCollection, callbacks_for
    from dsv3_recipes.train.container import to_config_container

    bridge = recipe_of(build_task("proxy_1gpu"))
    assert to_config_container(resolve(bridge)).train.manual_gc_interval == 50
    assert not any(isinstance(c, GarbageCollection) for c in callbacks_for(bridge))
    ours = recipe_of(build_task("proxy_1gpu", ["train.manual_gc_generation=1"]))
    cfg = to_config_container(resolve(ours))
    assert cfg.train.manual_gc and cfg.train.manual_gc_interval == 0  # Bridge still disables the automatic GC
    assert any(isinstance(c, GarbageCollection) for c in callbacks_for(ours))
    frozen = recipe_of(build_task("proxy_1gpu", ["train.gc_freeze=True"]))
    assert to_config_container(resolve(frozen)).train.manual_gc_interval == 50
    assert any(isinstance(c, GarbageCollection) for c in callbacks_for(frozen))


def test_the_callback_freezes_once_and_collects_its_generation_where_bridge_would(monkeypatch):
    pytest.importorskip("megatron.bridge", reason="needs the train extra")
    from dsv3_recipes.train import callbacks

    calls = []
    monkeypatch.setattr(callbacks.gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(callbacks.gc, "collect", lambda generation=2: calls.append(generation))
    recipe = recipe_of(
        build_task(
            "proxy_1gpu",
            ["train.gc_freeze=True", "train.manual_gc_generation=1", "train.manual_gc_interval=5"],
        )
    )
    callback = callbacks.GarbageCollection(recipe)
    callback.on_train_start(types.SimpleNamespace())
    collected_after = []
    for step in range(12):  # Bridge's train_state.step before its increment: steps 1..12
        context = types.SimpleNamespace(
            state=types.SimpleNamespace(train_state=types.SimpleNamespace(step=step))
        )
        before = len(calls)
        callback.on_train_step_end(context)
        if len(calls) > before:
            collected_after.append(step + 1)
    assert calls == ["freeze", 1, 1]
    assert collected_after == [5, 10]  # Bridge's maybe_run_manual_gc: iteration % interval == 0


def test_profiling_puts_the_module_ranges_on():
    pytest.importorskip("megatron.bridge", reason="needs the train extra")
    from dsv3_recipes.train.callbacks import callbacks_for
    from dsv3_recipes.train.profile_ranges import ProfileRangesCallback

    profiled = recipe_of(build_task("proxy_1gpu", ["profiling.use_pytorch_profiler=True"]))
    assert any(isinstance(c, ProfileRangesCallback) for c in callbacks_for(profiled))
    assert not any(
        isinstance(c, ProfileRangesCallback) for c in callbacks_for(recipe_of(build_task("proxy_1gpu")))
    )
