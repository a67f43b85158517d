"""Megatron models through Megatron-Bridge's AutoBridge (train side): built from a HF checkpoint for
import, loaded from a Megatron checkpoint for export, verify and generate. The weight mapping and the
FP8 dequantization are Bridge's; this module only sets the parallel layout and dtype.
"""

from __future__ import annotations

from pathlib import Path

import torch
from megatron.bridge import AutoBridge
from megatron.core.utils import get_model_config

from conversion.checks import Parallelism
from conversion.distributed import on_gpu
from dsv3_recipes.recipe.schema import RecipeError

DTYPE = torch.bfloat16
# Architecture fields an export reference must share with the Megatron model (MTP is checked apart:
# a model trained without it exports without it).
ARCHITECTURE_FIELDS = (
    "num_layers",
    "hidden_size",
    "ffn_hidden_size",
    "num_attention_heads",
    "num_moe_experts",
    "moe_ffn_hidden_size",
    "moe_shared_expert_intermediate_size",
    "moe_layer_freq",
    "q_lora_rank",
    "kv_lora_rank",
    "qk_head_dim",
    "qk_pos_emb_head_dim",
    "v_head_dim",
    "vocab_size",
)


def bridge_for(hf_path: str | Path) -> AutoBridge:
    """The DeepSeek-V3 bridge of an HF checkpoint: config now, weights read lazily shard by shard."""
    return AutoBridge.from_hf_pretrained(str(hf_path))


def _parallel_overrides(parallel: Parallelism) -> dict:
    return {
        "tensor_model_parallel_size": parallel.tp,
        "pipeline_model_parallel_size": parallel.pp,
        "expert_model_parallel_size": parallel.ep,
        "expert_tensor_parallel_size": 1,
        "sequence_parallel": parallel.tp > 1,  # Megatron requires it for MoE with TP > 1
        "pipeline_dtype": DTYPE,
        "params_dtype": DTYPE,
        "gradient_accumulation_fusion": False,  # no backward here; the fused wgrad kernel needs apex
    }


def model_from_hf(bridge: AutoBridge, parallel: Parallelism) -> list[torch.nn.Module]:
    """This rank's part of the model, with the HF weights (FP8 ones dequantized by Bridge's
    DeepSeekV3Bridge.maybe_modify_loaded_hf_weight) loaded into it."""
    provider = bridge.to_megatron_provider(load_weights=False)
    for name, value in _parallel_overrides(parallel).items():
        setattr(provider, name, value)
    provider.bf16, provider.fp16 = True, False
    provider.perform_initialization = False  # every weight is overwritten from the checkpoint
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False, use_cpu_initialization=not on_gpu())
    bridge.load_hf_weights(model)
    return model


def model_from_megatron(
    bridge: AutoBridge, checkpoint: str | Path, parallel: Parallelism
) -> list[torch.nn.Module]:
    """This rank's part of a Megatron-Bridge checkpoint, resharded to ``parallel``."""
    model = bridge.load_megatron_model(
        str(checkpoint), mp_overrides=_parallel_overrides(parallel), wrap_with_ddp=False
    )
    if on_gpu():
        model = [m.cuda() for m in model]
    for m in model:
        m.eval()
    return model


def mtp_layers(model: list[torch.nn.Module]) -> int:
    return get_model_config(model[0]).mtp_num_layers or 0


def check_same_architecture(bridge: AutoBridge, model: list[torch.nn.Module], arg: str) -> None:
    """Refuse exporting with a reference of another shape: the reference gives config and sharding."""
    reference = bridge.to_megatron_provider(load_weights=False)
    megatron = get_model_config(model[0])
    for name in ARCHITECTURE_FIELDS:
        want, have = getattr(reference, name, None), getattr(megatron, name, None)
        if want != have:
            raise RecipeError(
                arg,
                f"{name} is {want} in the reference but {have} in the Megatron checkpoint; "
                "give the HF checkpoint this model was imported from (or one of the same architecture)",
            )
    if mtp_layers(model) not in (0, reference.mtp_num_layers or 0):
        raise RecipeError(
            arg,
            f"the reference has {reference.mtp_num_layers} MTP layers, the checkpoint {mtp_layers(model)}",
        )
