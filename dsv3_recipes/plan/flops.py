"""Parameter counts and model FLOPs of the DSV3 architecture, exactly as Megatron-Core builds it.

Pure Python on purpose: the launch side plans with it and the train side divides it by measured step
times (TFLOPS/GPU, MFU), so both sides count the same model.

Weights (Megatron-Core 0.19 MLA + MoE with the Transformer Engine spec):
- attention: input RMSNorm; q_down (h x q_lora) and kv_down (h x (kv_lora + rope)) replicated on every
  TP rank; q_up and kv_up column-parallel, each with its fused RMSNorm (qk_layernorm); o_proj
  row-parallel. Without q_lora_rank a column-parallel q_proj replaces q_down/q_up.
- dense layers: a SwiGLU MLP whose fc1 carries the fused pre-MLP RMSNorm.
- MoE layers: pre-MLP RMSNorm, a replicated router (E x h; the expert bias is a buffer, not a weight),
  one SwiGLU shared expert (TP-split), E routed SwiGLU experts split over EP x ETP.
- MTP: per depth, enorm + hnorm, eh_proj (2h -> h, column-parallel), one layer like the last decoder
  layer and a final RMSNorm; it reuses the output layer and holds its own copy of the embedding.
- untied input embedding and output layer, vocab padded to make_vocab_size_divisible_by x TP.

FLOPs per token (forward + backward = 3 x forward, 2 FLOPs per multiply-add):
    6 x sum(matmul weights x fraction of tokens that use them)            # the "6 N_active" term
  + 6 x layers x heads x (qk_head_dim + rope_dim + v_head_dim) x seq / 2   # causal QK^T and AV
Routed experts count with fraction top-k / E; the output layer counts once per prediction (main + each
MTP depth); the embedding lookup, norms, softmax and activations count zero. The causal attention uses
seq/2 as Megatron's own num_floating_point_operations does, so the MFU here and Megatron's logged
TFLOPS describe the same work. Recompute is not counted (model FLOPs, not hardware FLOPs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from dsv3_recipes.recipe.schema import ModelConfig

Sharding = Literal["tp", "replicated", "expert"]


@dataclass(frozen=True)
class Weight:
    """One weight tensor of a layer (summed over experts for routed experts)."""

    name: str
    numel: int
    sharding: Sharding  # 'tp': split over TP; 'replicated': whole on every TP rank; 'expert': over EP x ETP
    matmul_fraction: float = 0.0  # share of tokens that multiply with it (0: no matmul, e.g. norms)
    te_gemm: bool = False  # a Transformer Engine GEMM weight: what FP8 recipes quantize


def padded_vocab_size(model: ModelConfig) -> int:
    """Megatron pads the vocabulary to a multiple of make_vocab_size_divisible_by x TP."""
    multiple = model.make_vocab_size_divisible_by * model.tensor_model_parallel_size
    return math.ceil(model.vocab_size / multiple) * multiple


def attention_weights(model: ModelConfig) -> list[Weight]:
    """MLA weights of one layer, including the layer's input RMSNorm."""
    h, n = model.hidden_size, model.num_attention_heads
    q_head = model.qk_head_dim + model.qk_pos_emb_head_dim
    weights = [Weight("input_layernorm", h, "replicated")]
    if model.q_lora_rank is None:
        weights.append(Weight("q_proj", h * n * q_head, "tp", 1.0, te_gemm=True))
    else:
        weights.append(Weight("q_down_proj", h * model.q_lora_rank, "replicated", 1.0, te_gemm=True))
        if model.qk_layernorm:
            weights.append(Weight("q_layernorm", model.q_lora_rank, "replicated"))
        weights.append(Weight("q_up_proj", model.q_lora_rank * n * q_head, "tp", 1.0, te_gemm=True))
    kv_down = h * (model.kv_lora_rank + model.qk_pos_emb_head_dim)
    weights.append(Weight("kv_down_proj", kv_down, "replicated", 1.0, te_gemm=True))
    if model.qk_layernorm:
        weights.append(Weight("kv_layernorm", model.kv_lora_rank, "replicated"))
    kv_up = model.kv_lora_rank * n * (model.qk_head_dim + model.v_head_dim)
    weights.append(Weight("kv_up_proj", kv_up, "tp", 1.0, te_gemm=True))
    weights.append(Weight("o_proj", n * model.v_head_dim * h, "tp", 1.0, te_gemm=True))
    return weights


def dense_mlp_weights(model: ModelConfig) -> list[Weight]:
    """SwiGLU MLP of a dense layer; its fc1 holds the fused pre-MLP RMSNorm."""
    h, f = model.hidden_size, model.ffn_hidden_size
    return [
        Weight("pre_mlp_layernorm", h, "replicated"),
        Weight("mlp_fc1", h * 2 * f, "tp", 1.0, te_gemm=True),
        Weight("mlp_fc2", f * h, "tp", 1.0, te_gemm=True),
    ]


def moe_weights(model: ModelConfig) -> list[Weight]:
    """Router, shared expert and routed experts of one MoE layer."""
    h, e = model.hidden_size, model.num_moe_experts
    shared, routed = model.moe_shared_expert_intermediate_size, model.moe_ffn_hidden_size
    routed_share = model.moe_router_topk / e
    weights = [
        Weight("pre_mlp_layernorm", h, "replicated"),
        Weight("router", e * h, "replicated", 1.0),
    ]
    if shared:
        weights += [
            Weight("shared_expert_fc1", h * 2 * shared, "tp", 1.0, te_gemm=True),
            Weight("shared_expert_fc2", shared * h, "tp", 1.0, te_gemm=True),
        ]
    weights += [
        Weight("routed_experts_fc1", e * h * 2 * routed, "expert", routed_share, te_gemm=True),
        Weight("routed_experts_fc2", e * routed * h, "expert", routed_share, te_gemm=True),
    ]
    return weights


def is_moe_layer(model: ModelConfig, decoder_id: int) -> bool:
    """Megatron's moe_layer_freq = [0] * first_k_dense_replace + [1] * (num_layers - k)."""
    return model.num_moe_experts > 0 and decoder_id >= model.first_k_dense_replace


def decoder_layer_weights(model: ModelConfig, decoder_id: int) -> list[Weight]:
    """All weights of decoder layer ``decoder_id`` (0-based)."""
    mlp = moe_weights(model) if is_moe_layer(model, decoder_id) else dense_mlp_weights(model)
    return attention_weights(model) + mlp


def mtp_layer_weights(model: ModelConfig) -> list[Weight]:
    """One MTP depth: its projections and norms plus a copy of the last decoder layer's structure."""
    h = model.hidden_size
    own = [
        Weight("mtp_enorm", h, "replicated"),
        Weight("mtp_hnorm", h, "replicated"),
        Weight("mtp_eh_proj", 2 * h * h, "tp", 1.0, te_gemm=True),
        Weight("mtp_final_layernorm", h, "replicated"),
    ]
    return own + decoder_layer_weights(model, model.num_layers - 1)


def embedding_weights(model: ModelConfig) -> list[Weight]:
    """The vocab-parallel input embedding (a lookup: no FLOPs)."""
    return [Weight("word_embeddings", padded_vocab_size(model) * model.hidden_size, "tp")]


def loss_weights(model: ModelConfig) -> list[Weight]:
    """Final RMSNorm and the untied output layer of the main prediction."""
    h = model.hidden_size
    return [
        Weight("final_layernorm", h, "replicated"),
        Weight("output_layer", padded_vocab_size(model) * h, "tp", 1.0),
    ]


def _numel(weights: list[Weight]) -> int:
    return sum(w.numel for w in weights)


def _active(weights: list[Weight]) -> float:
    return sum(w.numel * (w.matmul_fraction if w.sharding == "expert" else 1.0) for w in weights)


@dataclass(frozen=True)
class ParameterCounts:
    """Whole-model counts (one copy of each weight, as in a checkpoint)."""

    main_model: int  # decoder + embedding + output layer ("671B"); MTP excluded
    mtp: int  # MTP depths without the embedding/output they share
    routed_experts: int  # routed expert weights of the main model
    embedding: int  # input embedding + output layer
    active_per_token: float  # main-model weights one token touches (top-k experts), embedding included

    @property
    def total(self) -> int:
        return self.main_model + self.mtp


def parameter_counts(model: ModelConfig) -> ParameterCounts:
    """Total, MTP, routed-expert, embedding and per-token active parameter counts."""
    decoder = [decoder_layer_weights(model, i) for i in range(model.num_layers)]
    embedding = embedding_weights(model) + [w for w in loss_weights(model) if w.name == "output_layer"]
    main = decoder + [embedding_weights(model), loss_weights(model)]
    mtp = [mtp_layer_weights(model) for _ in range(model.mtp_num_layers or 0)]
    return ParameterCounts(
        main_model=sum(_numel(ws) for ws in main),
        mtp=sum(_numel(ws) for ws in mtp),
        routed_experts=sum(w.numel for ws in decoder for w in ws if w.sharding == "expert"),
        embedding=_numel(embedding),
        active_per_token=sum(_active(ws) for ws in main),
    )


def matmul_flops_per_token(weights: list[Weight]) -> float:
    """Forward FLOPs of the weight matmuls one token goes through: 2 per multiply-add."""
    return 2.0 * sum(w.numel * w.matmul_fraction for w in weights)


def attention_core_flops_per_token(model: ModelConfig) -> float:
    """Forward FLOPs of causal QK^T and AV for one token of one layer (average context seq/2)."""
    q_head = model.qk_head_dim + model.qk_pos_emb_head_dim
    context = model.seq_length / 2
    return 2.0 * model.num_attention_heads * (q_head + model.v_head_dim) * context


def forward_flops_per_token(model: ModelConfig) -> float:
    """Forward model FLOPs per token: decoder layers, MTP depths and one output layer per prediction."""
    mtp_depths = model.mtp_num_layers or 0
    layers = model.num_layers + mtp_depths
    weight_flops = sum(
        matmul_flops_per_token(decoder_layer_weights(model, i)) for i in range(model.num_layers)
    )
    weight_flops += mtp_depths * matmul_flops_per_token(mtp_layer_weights(model))
    weight_flops += (1 + mtp_depths) * matmul_flops_per_token(loss_weights(model))
    return weight_flops + layers * attention_core_flops_per_token(model)


def model_flops_per_token(model: ModelConfig) -> float:
    """Training model FLOPs per token: forward plus a backward of twice the forward."""
    return 3.0 * forward_flops_per_token(model)
