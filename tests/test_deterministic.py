"""`train.deterministic=True`: Megatron-Bridge's determinism overrides, and their environment exported
by the launcher (TE and NCCL read it at start-up). The bit-identical resume it buys is measured on a GPU
by benchmarks/fault_resume.py (results under benchmarks/results/)."""

import types

import pytest

from dsv3_recipes import recipes
from dsv3_recipes.launch.submit import build_task, make_executor, recipe_of, render_launch
from dsv3_recipes.recipe.resolve import resolve
from dsv3_recipes.recipe.schema import DETERMINISTIC_ENV_VARS


def test_the_local_launch_exports_the_deterministic_env_over_the_recipes_own():
    task = build_task("h100_fp8_blockwise", ["train.deterministic=True"], shrink_gpus=1)
    recipe = recipe_of(task)
    assert recipe.env_vars["NVTE_ALLOW_NONDETERMINISTIC_ALGO"] == "1"  # seed 000/001's value ...
    script = render_launch(task, make_executor("local", recipe, None), recipe.name)
    for name, value in DETERMINISTIC_ENV_VARS.items():  # ... which the switch overrides
        assert f"export {name}={value}" in script or f"export {name}='{value}'" in script


def test_off_by_default_and_the_env_stays_the_recipes():
    recipe = recipe_of(recipes.get("proxy_1gpu"))
    assert not recipe.train.deterministic and recipe.run_env_vars == recipe.env_vars


def test_env_matches_what_bridge_applies_and_the_model_flags_reach_megatron(monkeypatch):
    pytest.importorskip("megatron.bridge", reason="needs the train extra")
    import torch
    from megatron.bridge.training.config import runtime_config_update

    from dsv3_recipes.train.container import to_config_container

    props = types.SimpleNamespace(major=9, minor=0, name="NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *_: props)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda mode: None)  # not for the test process
    monkeypatch.setenv("WORLD_SIZE", "1")
    for name, value in DETERMINISTIC_ENV_VARS.items():
        monkeypatch.setenv(name, value)
    recipe = recipe_of(build_task("proxy_1gpu", ["train.deterministic=True"]))
    cfg = to_config_container(resolve(recipe))
    runtime_config_update(cfg)  # Bridge's own validation: NCCL_ALGO set, no fused cross entropy
    assert cfg.model.deterministic_mode and not cfg.model.cross_entropy_loss_fusion
    assert {k: str(cfg.env_vars[k]) for k in DETERMINISTIC_ENV_VARS} == DETERMINISTIC_ENV_VARS
