"""Recipe factories by name. Each returns ``run.Partial(pretrain, recipe=run.Config[Recipe])``.

A variant calls its parent and overrides fields; ``task.recipe`` is the recipe to edit.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import nemo_run as run

from dsv3_recipes.recipe import RecipeError
from dsv3_recipes.recipes.b200 import b200_bf16_256gpu
from dsv3_recipes.recipes.gb200 import gb200_bf16_256gpu, gb200_mxfp8_256gpu
from dsv3_recipes.recipes.h100 import bridge_default_1024gpu, h100_bf16_512gpu, h100_fp8_blockwise
from dsv3_recipes.recipes.mlperf import mlperf_gb300_256gpu, mlperf_h100_1024gpu, mlperf_proxy_1gpu
from dsv3_recipes.recipes.proxy import (
    proxy_1gpu,
    proxy_1gpu_stock,
    proxy_2gpu_ep2,
    proxy_2gpu_pp2,
    proxy_4gpu_ep4,
    proxy_8gpu_ep8,
    proxy_8gpu_pp2ep4,
)
from dsv3_recipes.recipes.torchtitan import torchtitan_bf16_from_env
from dsv3_recipes.shrink import shrink

RECIPES: dict[str, Callable[[], run.Partial]] = {
    f.__name__: f
    for f in (
        proxy_1gpu,
        proxy_1gpu_stock,
        proxy_2gpu_ep2,
        proxy_2gpu_pp2,
        proxy_4gpu_ep4,
        proxy_8gpu_ep8,
        proxy_8gpu_pp2ep4,
        gb200_mxfp8_256gpu,
        h100_fp8_blockwise,
        bridge_default_1024gpu,
        h100_bf16_512gpu,
        b200_bf16_256gpu,
        gb200_bf16_256gpu,
        mlperf_gb300_256gpu,
        mlperf_h100_1024gpu,
        mlperf_proxy_1gpu,
    )
}
RECIPES["torchtitan_bf16"] = torchtitan_bf16_from_env


def get(name: str, gpu_type: str | None = None) -> run.Partial:
    """Build the named recipe task; an unknown name fails with the list of known ones.

    ``gpu_type`` reaches factories whose defaults depend on the GPU (they take a ``gpu_type``
    argument, e.g. proxy_1gpu); the other recipes are made for the GPU their source names.
    """
    try:
        factory = RECIPES[name]
    except KeyError:
        raise RecipeError("factory", f"unknown recipe {name!r}; allowed: {', '.join(RECIPES)}") from None
    if gpu_type is not None and "gpu_type" in inspect.signature(factory).parameters:
        return factory(gpu_type=gpu_type)
    return factory()


__all__ = ["RECIPES", "get", "shrink", *(f.__name__ for f in RECIPES.values())]
