"""Train-side preflight: before any model is built, refuse a flag set this container cannot run.

The launch side checks a recipe against its GPU type and Megatron's rules; only the node itself knows
whether DeepEP, HybridEP, apex or TE were built into the image and which FP8 recipes its GPU runs. A missing
piece would otherwise surface minutes later as an ImportError deep inside Megatron (or, for FP8, as a
kernel error at the first step): here it is one line naming the field and what to install or set. The
rules are ``recipe.rules.CONTAINER``, the same whose fixes ``--shrink`` substitutes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from dsv3_recipes.recipe import checkpoints, rules
from dsv3_recipes.recipe.rules import Capabilities
from dsv3_recipes.recipe.schema import Recipe, RecipeError

FP8_SUPPORT_CHECK = {  # recipe name -> Transformer Engine's own support check for the local GPU
    "tensorwise": "check_fp8_support",
    "delayed": "check_fp8_support",
    "blockwise": "check_fp8_block_scaling_support",
    "mxfp8": "check_mxfp8_support",
}


def fp8_support(fp8_recipe: str) -> tuple[bool, str]:
    """Transformer Engine's verdict on this GPU for an FP8 recipe: (supported, reason if not)."""
    from transformer_engine.pytorch import quantization

    return getattr(quantization, FP8_SUPPORT_CHECK[fp8_recipe])()


def check_world(recipe: Recipe, env: Mapping[str, str]) -> None:
    """The job started as many ranks as the recipe's layout needs (torchrun's WORLD_SIZE, srun's
    SLURM_NTASKS): any door's executor may have been sized by hand."""
    world = env.get("WORLD_SIZE") or env.get("SLURM_NTASKS")
    if world and world.isdigit() and int(world) != recipe.launch.num_gpus:
        raise RecipeError(
            "launch.num_nodes",
            f"the job runs {world} rank(s), recipe {recipe.name} needs {recipe.launch.num_nodes} node(s) "
            f"x {recipe.launch.gpus_per_node} GPU(s) = {recipe.launch.num_gpus}; size the executor from "
            "the recipe",
        )


def check_container(recipe: Recipe) -> None:
    """Raise RecipeError for the first feature of ``recipe`` that this container cannot run, or a
    checkpoint to start from that this node does not see (the launch side cannot see a cluster's)."""
    checkpoints.check_exists(recipe)
    check_world(recipe, os.environ)
    rules.check_all(rules.CONTAINER, recipe, Capabilities.here(fp8_support=fp8_support))
