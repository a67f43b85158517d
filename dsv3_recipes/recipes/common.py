"""Pieces every recipe module uses: the recipe config, the task and the 671B starting point.

Factories build with fiddle alone (NeMo-Run's import takes seconds, and `dsv3 show`/`plan` need none of
it); ``recipes.task`` makes the NeMo-Run task of a factory's output where one is launched or exported."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable

import fiddle as fdl

from dsv3_recipes.recipe import models
from dsv3_recipes.recipe.schema import LaunchConfig, Recipe
from dsv3_recipes.train.entry import pretrain

# [mcore-gb200] lists these; [moe-zoo]'s DeepSeek-V3.yaml, which the H100 guide ([mcore-h100]) launches
# with, sets the same ones, so all Megatron-Core guide recipes share them.
MCORE_DSV3_ENV_VARS: dict[str, str] = {
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",  # keep kernel launch order = stream order for TP/CP overlap
    "NVTE_ALLOW_NONDETERMINISTIC_ALGO": "1",  # allow TE's faster non-deterministic kernels
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",  # less fragmentation with MoE's varying shapes
    "NCCL_NVLS_ENABLE": "0",  # no NVLink SHARP buffers: they cost memory and are not used here
    "NVTE_FUSED_ATTN": "1",  # cuDNN fused attention for MLA
    "NVTE_NORM_FWD_USE_CUDNN": "1",  # cuDNN RMSNorm forward
    "NVTE_NORM_BWD_USE_CUDNN": "1",  # cuDNN RMSNorm backward
    "PYTHONWARNINGS": "ignore",  # deprecation noise on every rank
    "NCCL_DEBUG": "VERSION",  # print the NCCL version once, nothing else
}

# What Bridge's recipes export on every launch ([bridge-dsv3]: COMMON_RECIPE_ENV_VARS of Megatron-Bridge
# 0.6.2's recipes/utils/environment_utils.py).
BRIDGE_ENV_VARS: dict[str, str] = {
    "NCCL_GRAPH_REGISTER": "0",  # expandable allocator, no NCCL user-buffer registration
    "NCCL_NVLS_ENABLE": "0",  # no NVLink SHARP buffers (and no multicast objects on shared hosts)
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",  # less fragmentation with MoE shapes
    "TORCH_NCCL_AVOID_RECORD_STREAMS": "1",  # free NCCL buffers without record_stream overhead
    "TORCH_NCCL_HIGH_PRIORITY": "1",  # NCCL streams ahead of compute
}


def registered(name: str | Callable | None = None) -> Callable:
    """Marks a recipe factory: ``@registered`` (the recipe is named like the function) or
    ``@registered("name")``. ``dsv3_recipes.recipes`` finds the marks in the modules' source without
    importing them, so this mark is the registry; the function keeps ``recipe_name`` for notebooks."""

    def mark(fn: Callable) -> Callable:
        fn.recipe_name = fn.__name__ if name is None or callable(name) else name  # type: ignore[attr-defined]
        return fn

    return mark(name) if callable(name) else mark


def recipe_config(name: str, model: fdl.Config, launch: fdl.Config) -> fdl.Config[Recipe]:
    """A Recipe config with every section spelled out, so factories and overrides can edit any field."""
    hints = typing.get_type_hints(Recipe)
    sections = {
        f.name: fdl.Config(hints[f.name])
        for f in dataclasses.fields(Recipe)
        if dataclasses.is_dataclass(hints[f.name]) and f.name not in ("model", "launch")
    }
    return fdl.Config(Recipe, name=name, model=model, launch=launch, env_vars={}, **sections)


def pretrain_task(recipe: fdl.Config[Recipe]) -> fdl.Partial:
    """The task every recipe runs, in fiddle alone: ``recipes.task`` makes NeMo-Run's of it."""
    return fdl.Partial(pretrain, recipe=recipe)


def dsv3_671b(name: str, gpu_type: str, num_nodes: int, gpus_per_node: int) -> fdl.Partial:
    """DeepSeek-V3 671B with the Recipe defaults; each source's factory then sets its own flags."""
    launch = fdl.Config(LaunchConfig, gpu_type=gpu_type, num_nodes=num_nodes, gpus_per_node=gpus_per_node)
    return pretrain_task(recipe_config(name, models.deepseek_v3_671b(), launch))
