"""Train-side preflight: before any model is built, refuse a flag set this container cannot run.

The launch side checks a recipe against its GPU type and Megatron's rules; only the node itself knows
whether DeepEP, HybridEP or apex were built into the image and which FP8 recipes its GPU runs. A missing
piece would otherwise surface minutes later as an ImportError deep inside Megatron (or, for FP8, as a
kernel error at the first step): here it is one line naming the field and what to install or set.
"""

from __future__ import annotations

import importlib.util

from dsv3_recipes.recipe.schema import Recipe, RecipeError

FP8_SUPPORT_CHECK = {  # recipe name -> Transformer Engine's own support check for the local GPU
    "tensorwise": "check_fp8_support",
    "delayed": "check_fp8_support",
    "blockwise": "check_fp8_block_scaling_support",
    "mxfp8": "check_mxfp8_support",
}
SHRINK_HINT = "or launch with --shrink N, which substitutes what this machine lacks"


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def fp8_support(fp8_recipe: str) -> tuple[bool, str]:
    """Transformer Engine's verdict on this GPU for an FP8 recipe: (supported, reason if not)."""
    from transformer_engine.pytorch import quantization

    return getattr(quantization, FP8_SUPPORT_CHECK[fp8_recipe])()


def check_container(recipe: Recipe) -> None:
    """Raise RecipeError for the first feature of ``recipe`` that this container cannot run."""
    m = recipe.model
    if m.moe_token_dispatcher_type == "flex":
        backend = m.moe_flex_dispatcher_backend or "deepep"
        extension = {"deepep": "deep_ep_cpp", "hybridep": "hybrid_ep_cpp"}[backend]
        if not _has(extension):
            raise RecipeError(
                "model.moe_flex_dispatcher_backend",
                f"{backend!r} needs DeepEP's {extension} extension, which this container lacks: use the "
                f"project's image (docker/), or set model.moe_token_dispatcher_type=alltoall, {SHRINK_HINT}",
            )
    if m.gradient_accumulation_fusion and not _has("fused_weight_gradient_mlp_cuda"):
        raise RecipeError(
            "model.gradient_accumulation_fusion",
            "needs apex's fused_weight_gradient_mlp_cuda, which this container lacks: install apex with "
            "--cuda_ext, or set it to False",
        )
    fp8 = recipe.mixed_precision.fp8_recipe
    if fp8 is not None:
        supported, reason = fp8_support(fp8)
        if not supported:
            raise RecipeError(
                "mixed_precision.fp8_recipe", f"{fp8!r} does not run on this GPU ({reason}); {SHRINK_HINT}"
            )
