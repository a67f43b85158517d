"""TE's one-launch grouped GEMM for the experts, under Megatron-Core's non-fused ``TEGroupedMLP``.

With ``NVTE_GROUPED_LINEAR_USE_FUSED_GROUPED_GEMM=1`` Transformer Engine's ``GroupedLinear`` runs all of a
layer's experts in one cuBLASLt grouped GEMM (cuBLASLt 13.4+ on Hopper) instead of one GEMM launch and its
host work per expert, keeping one weight per expert (checkpoints and HF conversion unchanged). That path
takes the token counts only as a CUDA tensor, while Megatron-Core 0.19's non-fused ``TEGroupedMLP`` hands
it a Python list (it needs the counts on the host for FP8 padding): TE then raises. ``install`` makes
Megatron's ``TEGroupedLinear`` hand TE the counts on the layer's device, only on layers TE built for that
path (``use_grouped_tensor``, which TE reads from the variable), so the default path is untouched. Where
TE falls back (an older cuBLASLt, a recipe the path lacks), it reads the tensor back as before. Train side:
imports torch and TE.
"""

from __future__ import annotations

import functools

import torch


def install() -> bool:
    """Patch ``TEGroupedLinear.forward`` once; True when this call patched it."""
    from megatron.core.extensions.transformer_engine import TEGroupedLinear

    forward = TEGroupedLinear.forward
    if getattr(forward, "_splits_on_device", False):
        return False

    @functools.wraps(forward)
    def forward_with_device_splits(self, x: torch.Tensor, m_splits):
        if getattr(self, "use_grouped_tensor", False) and not isinstance(m_splits, torch.Tensor):
            m_splits = torch.tensor(m_splits, dtype=torch.int64, device=x.device)
        return forward(self, x, m_splits)

    forward_with_device_splits._splits_on_device = True
    TEGroupedLinear.forward = forward_with_device_splits
    return True
