"""Parameter counts and FLOPs of DeepSeek-V3 671B against arithmetic written out by hand."""

import dataclasses

import fiddle as fdl
import pytest

from dsv3_recipes.plan import flops
from dsv3_recipes.recipe import models

# DeepSeek-V3 671B (HF config.json): hidden, heads, q/kv LoRA ranks, head dims, experts, FFN widths.
H, HEADS, Q_LORA, KV_LORA, QK, ROPE, V = 7168, 128, 1536, 512, 128, 64, 128
EXPERTS, TOPK, F_EXPERT, F_SHARED, F_DENSE = 256, 8, 2048, 2048, 18432
VOCAB, LAYERS, DENSE_LAYERS, SEQ = 129280, 61, 3, 4096
MOE_LAYERS = LAYERS - DENSE_LAYERS  # 58

# One MLA block.
ATTN_MATMUL = (
    H * Q_LORA  # q_down
    + Q_LORA * HEADS * (QK + ROPE)  # q_up
    + H * (KV_LORA + ROPE)  # kv_down (latent + shared rope key)
    + KV_LORA * HEADS * (QK + V)  # kv_up
    + HEADS * V * H  # o_proj
)
assert ATTN_MATMUL == 11_010_048 + 37_748_736 + 4_128_768 + 16_777_216 + 117_440_512 == 187_105_280
ATTN_NORMS = H + Q_LORA + KV_LORA  # input norm, q_layernorm, kv_layernorm
ATTN = ATTN_MATMUL + ATTN_NORMS  # 187_114_496

DENSE_MLP_MATMUL = 3 * H * F_DENSE  # SwiGLU: fc1 is h x 2F, fc2 F x h
DENSE_MLP = DENSE_MLP_MATMUL + H  # + the norm fused into fc1
ROUTER, SHARED = EXPERTS * H, 3 * H * F_SHARED  # 1_835_008, 44_040_192
ONE_EXPERT = 3 * H * F_EXPERT  # 44_040_192
MOE = H + ROUTER + SHARED + EXPERTS * ONE_EXPERT  # 11_320_171_520
EMBED = VOCAB * H  # 926_679_040; VOCAB = 101 x 1280, no padding at TP1

MAIN = DENSE_LAYERS * (ATTN + DENSE_MLP) + MOE_LAYERS * (ATTN + MOE) + 2 * EMBED + H  # + final norm
MTP = 2 * H + 2 * H * H + H + ATTN + MOE  # enorm, hnorm, eh_proj, final norm, one MoE layer
ACTIVE = LAYERS * ATTN + DENSE_LAYERS * DENSE_MLP + MOE_LAYERS * (H + ROUTER + SHARED + TOPK * ONE_EXPERT)
ACTIVE += 2 * EMBED + H


@pytest.fixture(scope="module")
def dsv3():
    return fdl.build(models.deepseek_v3_671b())


def test_671b_parameter_counts(dsv3):
    counts = flops.parameter_counts(dsv3)
    assert MAIN == 671_026_404_352
    assert counts.main_model == MAIN
    assert counts.main_model == pytest.approx(671e9, rel=1e-3)
    assert counts.routed_experts == MOE_LAYERS * EXPERTS * ONE_EXPERT
    assert counts.mtp == MTP == 11_610_067_968  # DeepSeek's "14B MTP" also counts the shared embedding/head
    assert counts.embedding == 2 * EMBED
    assert counts.active_per_token == ACTIVE == 37_552_282_624
    assert counts.active_per_token == pytest.approx(37e9, rel=0.02)


def test_vocab_padding_follows_tensor_parallelism(dsv3):
    assert flops.padded_vocab_size(dsv3) == VOCAB
    tp2 = dataclasses.replace(dsv3, tensor_model_parallel_size=2)
    assert flops.padded_vocab_size(tp2) == 51 * 2560 == 130_560  # ceil(129280 / (1280 x 2)) x 2560


def test_671b_flops_per_token_with_mtp(dsv3):
    # 6 x active matmul weights (fwd 2 + bwd 4 per multiply-add) + causal attention over seq/2.
    moe_active_matmul = ROUTER + SHARED + TOPK * ONE_EXPERT  # 398_196_736
    decoder = LAYERS * ATTN_MATMUL + DENSE_LAYERS * DENSE_MLP_MATMUL + MOE_LAYERS * moe_active_matmul
    mtp = 2 * H * H + ATTN_MATMUL + moe_active_matmul  # eh_proj + one MoE layer
    heads = 2 * EMBED  # output layer once for the main prediction, once for the MTP depth
    n_active_matmul = decoder + mtp + heads
    assert n_active_matmul == 38_239_338_496
    core_attention = 2 * HEADS * (QK + ROPE + V) * SEQ / 2  # QK^T and AV, per token and layer, forward
    expected = 6 * n_active_matmul + 3 * (LAYERS + 1) * core_attention
    assert expected == 260_641_652_736
    assert flops.model_flops_per_token(dsv3) == expected


def test_671b_flops_per_token_without_mtp(dsv3):
    no_mtp = dataclasses.replace(dsv3, mtp_num_layers=None)
    moe_active_matmul = ROUTER + SHARED + TOPK * ONE_EXPERT
    decoder = LAYERS * ATTN_MATMUL + DENSE_LAYERS * DENSE_MLP_MATMUL + MOE_LAYERS * moe_active_matmul
    core_attention = HEADS * (QK + ROPE + V) * SEQ
    expected = 6 * (decoder + EMBED) + 3 * LAYERS * core_attention
    assert flops.model_flops_per_token(no_mtp) == expected == 250_449_887_232


def test_attention_term_grows_with_sequence_length(dsv3):
    longer = dataclasses.replace(dsv3, seq_length=2 * SEQ)
    extra = flops.model_flops_per_token(longer) - flops.model_flops_per_token(dsv3)
    assert extra == 3 * (LAYERS + 1) * HEADS * (QK + ROPE + V) * SEQ  # the seq/2 context doubled


def test_proxy_count_matches_megatron_core():
    """1,045,323,520 was read off Megatron-Core 0.19's GPTModel (TE spec) for the 1-GPU proxy cut to
    two layers (one dense, one MoE) plus its MTP depth, instantiated on CPU and summed over
    named_parameters()."""
    proxy = dataclasses.replace(fdl.build(models.proxy_1gpu()), num_layers=2, first_k_dense_replace=1)
    assert flops.parameter_counts(proxy).total == 1_045_323_520


def test_tensor_parallel_split_of_weights(dsv3):
    by_name = {w.name: w for w in flops.decoder_layer_weights(dsv3, 5)}
    # Megatron builds q_down/kv_down as TE 'duplicated' linears and the router replicated on every TP rank.
    assert {by_name[n].sharding for n in ("q_down_proj", "kv_down_proj", "router")} == {"replicated"}
    assert {by_name[n].sharding for n in ("q_up_proj", "kv_up_proj", "o_proj", "shared_expert_fc1")} == {"tp"}
    assert by_name["routed_experts_fc1"].sharding == "expert"
    assert by_name["routed_experts_fc1"].matmul_fraction == TOPK / EXPERTS
    assert not flops.is_moe_layer(dsv3, 2) and flops.is_moe_layer(dsv3, 3)
