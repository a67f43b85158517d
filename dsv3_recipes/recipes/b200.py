"""B200 recipes (8 GPUs per node, HGX)."""

from __future__ import annotations

import fiddle as fdl

from dsv3_recipes.recipes.common import registered
from dsv3_recipes.recipes.torchtitan import torchtitan_bf16


@registered
def b200_bf16_256gpu() -> fdl.Partial:
    """TorchTitan's B200 BF16 baseline ([titan-dsv3]): 256 GPUs, DP32 EP32 PP8, local batch 16, 200 steps."""
    return torchtitan_bf16("b200_bf16_256gpu", gpu_type="b200")
