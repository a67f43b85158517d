"""Pieces every recipe module uses: the task wrapper and the 671B starting point."""

from __future__ import annotations

import dataclasses
import typing

import nemo_run as run
import nemo_run.core.serialization.yaml  # noqa: F401  (registers run.Partial's YAML representer)
import yaml

from dsv3_recipes.plan.preflight import check_launch
from dsv3_recipes.plan.validate import built
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


def recipe_config(name: str, model: run.Config, launch: run.Config) -> run.Config[Recipe]:
    """A Recipe config with every section spelled out, so factories and overrides can edit any field."""
    hints = typing.get_type_hints(Recipe)
    sections = {
        f.name: run.Config(hints[f.name])
        for f in dataclasses.fields(Recipe)
        if dataclasses.is_dataclass(hints[f.name]) and f.name not in ("model", "launch")
    }
    return run.Config(Recipe, name=name, model=model, launch=launch, env_vars={}, **sections)


class PretrainTask(run.Partial):
    """``run.Partial(pretrain, recipe=run.Config[Recipe])`` that checks its recipe when NeMo-Run takes it.

    NeMo-Run never builds a task on the launch side: ``run.run(task, executor=...)`` and
    ``Experiment.add`` serialize it and take a ``clone()`` (``launch.nemo_run_internals``), dry run
    or not. Checking there makes a notebook's ``run.run`` refuse what ``dsv3 pretrain`` refuses:
    every recipe rule, the memory plan, and what any launch needs (``plan.check_launch``). The GPU
    node checks again when ``pretrain`` starts. A door that has run ``check_launch`` itself (``dsv3
    pretrain``) hands NeMo-Run ``checked(task)`` instead, so that the recipe is validated once.
    """

    def clone(self) -> PretrainTask:
        check_launch(built(self.recipe))
        return super().clone()


# NeMo-Run writes each job's task as YAML with representers registered per exact class: give this one
# run.Partial's (else the job directory gets no <name>_config.yaml).
yaml.SafeDumper.add_representer(PretrainTask, yaml.SafeDumper.yaml_representers[run.Partial])


def checked(task: run.Partial) -> run.Partial:
    """The task as NeMo-Run takes it after the door ran ``check_launch``: a plain ``run.Partial`` of the
    same function and recipe, whose ``clone`` does not check again."""
    return run.Partial(task.__fn_or_cls__, recipe=task.recipe)


def pretrain_task(recipe: run.Config[Recipe]) -> PretrainTask:
    """The runnable task: ``run.run(task, executor=...)``; overrides go to ``task.recipe``."""
    return PretrainTask(pretrain, recipe=recipe)


def dsv3_671b(name: str, gpu_type: str, num_nodes: int, gpus_per_node: int) -> run.Partial:
    """DeepSeek-V3 671B with the Recipe defaults; each source's factory then sets its own flags."""
    launch = run.Config(LaunchConfig, gpu_type=gpu_type, num_nodes=num_nodes, gpus_per_node=gpus_per_node)
    return pretrain_task(recipe_config(name, models.deepseek_v3_671b(), launch))
