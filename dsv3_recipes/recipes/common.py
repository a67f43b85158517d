"""Pieces every recipe module uses: the task wrapper and the 671B starting point."""

from __future__ import annotations

import dataclasses
import typing

import nemo_run as run

from dsv3_recipes import models
from dsv3_recipes.recipe import LaunchConfig, Recipe
from dsv3_recipes.train.entry import pretrain

# Seed 000 (GB200 guide) lists these; the Megatron-LM DeepSeek-V3 run.sh that seed 001 (H100 guide)
# launches with sets the same ones, so all seed-000/001 recipes share them.
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


def recipe_config(name: str, model: run.Config, launch: run.Config) -> run.Config[Recipe]:
    """A Recipe config with every section spelled out, so factories and overrides can edit any field."""
    hints = typing.get_type_hints(Recipe)
    sections = {
        f.name: run.Config(hints[f.name])
        for f in dataclasses.fields(Recipe)
        if dataclasses.is_dataclass(hints[f.name]) and f.name not in ("model", "launch")
    }
    return run.Config(Recipe, name=name, model=model, launch=launch, env_vars={}, **sections)


def pretrain_task(recipe: run.Config[Recipe]) -> run.Partial:
    """The runnable task: ``run.run(task, executor=...)``; overrides go to ``task.recipe``."""
    return run.Partial(pretrain, recipe=recipe)


def dsv3_671b(name: str, gpu_type: str, num_nodes: int, gpus_per_node: int) -> run.Partial:
    """DeepSeek-V3 671B with the Recipe defaults; each seed's factory then sets its own flags."""
    launch = run.Config(LaunchConfig, gpu_type=gpu_type, num_nodes=num_nodes, gpus_per_node=gpus_per_node)
    return pretrain_task(recipe_config(name, models.deepseek_v3_671b(), launch))
