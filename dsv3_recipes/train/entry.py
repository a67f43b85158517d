"""The task every recipe runs: ``pretrain(recipe)`` on each rank. Heavy imports stay inside, so the
launch side can reference this function in a ``run.Partial`` without torch."""

from __future__ import annotations

import os
import socket
import sys

from dsv3_recipes.launch import code_check
from dsv3_recipes.plan.validate import validate
from dsv3_recipes.recipe.checkpoints import check_resume
from dsv3_recipes.recipe.schema import Recipe, RecipeError


def pretrain(recipe: Recipe) -> None:
    """Translate the recipe to a ConfigContainer and train with Megatron-Bridge's GPT step.

    The recipe is validated again first (the same ``validate`` the launch ran): a task built on the
    node, or a recipe edited after its launch was checked, fails here before any GPU work; so does a
    flag set this container cannot run (``train.preflight``).
    """
    from dsv3_recipes.train import wgrad_fusion
    from dsv3_recipes.train.preflight import check_container

    code_check.check()  # first: the image must hold the code that planned the job
    if recipe.model.gradient_accumulation_fusion:
        wgrad_fusion.install()  # before Megatron-Core is imported: it looks for apex's kernels once
    try:
        resolved = validate(recipe)
        check_resume(recipe)
        check_container(recipe)
        _check_gpu(recipe)
    except RecipeError as err:  # one line per rank, and a failed job
        print(f"dsv3: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    for name, value in recipe.run_env_vars.items():
        os.environ.setdefault(name, str(value))  # the launcher's own settings win, as in Bridge
    # After the checks: it imports TE, which a node without CUDA cannot load (their one-line error first).
    from dsv3_recipes.train import grouped_gemm

    grouped_gemm.install()  # where the env asks TE for its one-launch expert GEMM: counts on the GPU
    if recipe.model.moe_counts_on_device:
        grouped_gemm.install_counts_on_device()  # no host sync for them either
    if recipe.optimizer.fused_adam:
        from dsv3_recipes.train import fused_adam

        fused_adam.install()  # before Bridge builds the optimizer: TE's FusedAdam takes the op at __init__

    # Imported here: megatron.bridge.training.pretrain needs nvidia-resiliency-ext (GPU containers only).
    from megatron.bridge.training.gpt_step import forward_step
    from megatron.bridge.training.pretrain import pretrain as bridge_pretrain

    from dsv3_recipes.train.callbacks import callbacks_for
    from dsv3_recipes.train.container import to_config_container

    bridge_pretrain(to_config_container(resolved), forward_step, callbacks=callbacks_for(recipe))


def _check_gpu(recipe: Recipe) -> None:
    """A rank without a GPU (a node without one, or a job not given its GPUs) stops here, in one line."""
    import torch

    if not torch.cuda.is_available():
        raise RecipeError(
            "launch.gpus_per_node",
            f"recipe {recipe.name} needs {recipe.launch.gpus_per_node} GPU(s) per node; this rank on "
            f"{socket.gethostname()} sees none (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})",
        )
