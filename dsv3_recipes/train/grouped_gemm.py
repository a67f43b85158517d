"""TE's one-launch grouped GEMM for the experts, under Megatron-Core's non-fused ``TEGroupedMLP``.

With ``NVTE_GROUPED_LINEAR_USE_FUSED_GROUPED_GEMM=1`` Transformer Engine's ``GroupedLinear`` runs all of a
layer's experts in one cuBLASLt grouped GEMM (cuBLASLt 13.4+ on Hopper) instead of one GEMM launch and its
host work per expert, keeping one weight per expert (checkpoints and HF conversion unchanged). That path
takes the token counts only as a CUDA tensor, while Megatron-Core 0.19's non-fused ``TEGroupedMLP`` hands
it a Python list (it needs the counts on the host for FP8 padding): TE then raises. ``install`` makes
Megatron's ``TEGroupedLinear`` hand TE the counts on the layer's device, only on layers TE built for that
path (``use_grouped_tensor``, which TE reads from the variable) and only where TE's own predicate says it
will take it (device, cuBLASLt, FP8 recipe): where TE would fall back, a tensor would cost a
host-to-device copy and TE's read-back (a sync) per GEMM, so the list stays and a warning says why. The
copy is made once per expert layer (fc1 and fc2 get the same list) from pinned memory without a sync: a
blocking copy made the host wait for fc1's GEMM before it could launch fc2 (0.6-1.4 ms per layer in the
profiled H100 step of 2026-12-07). ``install_counts_on_device`` (``model.moe_counts_on_device``, EP=1) goes
further: the counts never leave the GPU, so the all-gather dispatcher's two host syncs per MoE layer go.
Train side: imports torch and TE.
"""

from __future__ import annotations

import functools
import warnings

import torch
import transformer_engine_torch as tex
from transformer_engine.pytorch.module.grouped_linear import is_module_grouped_tensor_path_supported
from transformer_engine.pytorch.quantization import FP8GlobalStateManager

from dsv3_recipes.recipe.rules import TE_GROUPED_GEMM


def one_launch(layer: object, x: torch.Tensor) -> bool:
    """Whether TE runs this layer's experts in one grouped GEMM: the layer asked for it and TE supports
    it for this device, cuBLASLt and FP8 recipe (TE's predicate, the one its forward consults)."""
    if not getattr(layer, "use_grouped_tensor", False):
        return False
    recipe = FP8GlobalStateManager.get_fp8_recipe() if FP8GlobalStateManager.is_fp8_enabled() else None
    if is_module_grouped_tensor_path_supported(recipe, x.dtype):
        return True
    warnings.warn(
        f"{TE_GROUPED_GEMM} asks for TE's one-launch grouped GEMM, which TE does not "
        f"support here (cuBLASLt {tex.get_cublasLt_version()}, {x.dtype}, FP8 recipe "
        f"{type(recipe).__name__ if recipe else None}): one GEMM per expert",
        stacklevel=2,
    )
    return False


class DeviceSplits:
    """The last list of counts and its copy on the GPU, so that fc2 reuses fc1's (Megatron hands both the
    same list object; a new list is a new layer's or micro-batch's counts)."""

    def __init__(self) -> None:
        self.host: list[int] | None = None
        self.on_device: torch.Tensor | None = None

    def __call__(self, m_splits: list[int], device: torch.device) -> torch.Tensor:
        if m_splits is not self.host or self.on_device is None or self.on_device.device != device:
            # Pinned: the copy runs on the stream without making the host wait (the caching host
            # allocator keeps the buffer until the copy is done).
            pinned = device.type == "cuda"
            if pinned and torch.cuda.is_current_stream_capturing():  # a graph would replay stale counts
                raise RuntimeError("the experts' token counts are host data: a CUDA graph cannot hold them")
            host = torch.tensor(m_splits, dtype=torch.int64, pin_memory=pinned)
            self.on_device = host.to(device, non_blocking=pinned)
            self.host = m_splits
        return self.on_device


def install() -> bool:
    """Patch ``TEGroupedLinear.forward`` once; True when this call patched it."""
    from megatron.core.extensions.transformer_engine import TEGroupedLinear

    forward = TEGroupedLinear.forward
    if getattr(forward, "_splits_on_device", False):
        return False

    device_splits = DeviceSplits()

    @functools.wraps(forward)
    def forward_with_device_splits(self, x: torch.Tensor, m_splits):
        if not isinstance(m_splits, torch.Tensor) and one_launch(self, x):
            m_splits = device_splits(m_splits, x.device)
        return forward(self, x, m_splits)

    forward_with_device_splits._splits_on_device = True
    TEGroupedLinear.forward = forward_with_device_splits
    return True


class CountsOnDevice:
    """The experts' token counts as Megatron-Core 0.19's ``TEGroupedMLP.forward`` reads them
    (``.tolist()``, then only its GEMMs' splits in BF16 without bias), left on the GPU for TE."""

    def __init__(self, counts: torch.Tensor) -> None:
        self.counts = counts

    def tolist(self) -> torch.Tensor:
        return self.counts


def install_counts_on_device() -> bool:
    """Patch ``MoEAllGatherTokenDispatcher.dispatch_postprocess`` once; True when this call patched it.

    At EP=1 and TP=1 (rules.COUNTS_ON_DEVICE) Megatron's copies the counts to the host, a blocking copy,
    and selects the routed probs with ``masked_select``, whose size the host must read: two syncs per MoE
    layer, each draining the GPU's queue. Here the probs go through TE's fused permute with the tokens (the
    same gather, expert-major as ``masked_select``; without token dropping its size is tokens x top-k, known
    on the host) and the counts stay on the GPU. Where TE would not take them there, Megatron's runs."""
    from megatron.core.transformer.moe import moe_utils
    from megatron.core.transformer.moe.token_dispatcher import MoEAllGatherTokenDispatcher

    postprocess = MoEAllGatherTokenDispatcher.dispatch_postprocess
    if getattr(postprocess, "_counts_on_device", False):
        return False

    @functools.wraps(postprocess)
    def postprocess_on_device(self, hidden_states: torch.Tensor, probs: torch.Tensor):
        if (
            self.tp_size > 1
            or self.ep_size > 1
            or not is_module_grouped_tensor_path_supported(None, hidden_states.dtype)
        ):
            return postprocess(self, hidden_states, probs)
        self.hidden_shape_before_permute = hidden_states.shape
        self.local_map = self.routing_map  # every expert is local
        permuted, self.local_probs, self.reversed_local_input_permutation_mapping, _, _ = moe_utils.permute(
            hidden_states,
            self.local_map,
            probs=probs,
            num_out_tokens=self.local_map.shape[0] * self.router_topk,
            fused=self.config.moe_permute_fusion,
        )
        self.routing_map = None
        return permuted, CountsOnDevice(self.local_map.sum(dim=0)), self.local_probs

    postprocess_on_device._counts_on_device = True
    MoEAllGatherTokenDispatcher.dispatch_postprocess = postprocess_on_device
    return True
