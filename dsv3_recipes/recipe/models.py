"""Model sizes: DeepSeek-V3 671B and proxies of the same architecture.

The 671B values are those of the public Hugging Face config (deepseek-ai/DeepSeek-V3 config.json) in
Megatron's names; the Megatron-Bridge defaults (init std, vocab padding) are Bridge's DSV3 provider's.
A proxy calls its parent and changes only sizes, so MLA, the dense-then-MoE stack, sigmoid
group-limited routing with expert bias, the shared expert and MTP stay those of the real model.
"""

from __future__ import annotations

import fiddle as fdl

from dsv3_recipes.recipe.schema import ModelConfig


def deepseek_v3_671b() -> fdl.Config[ModelConfig]:
    """DeepSeek-V3 671B (37B active): the architecture every recipe starts from."""
    return fdl.Config(
        ModelConfig,
        num_layers=61,
        hidden_size=7168,
        ffn_hidden_size=18432,  # dense layers' SwiGLU width
        num_attention_heads=128,
        q_lora_rank=1536,
        kv_lora_rank=512,
        qk_head_dim=128,
        qk_pos_emb_head_dim=64,
        v_head_dim=128,
        num_moe_experts=256,
        moe_ffn_hidden_size=2048,
        moe_shared_expert_intermediate_size=2048,  # 1 shared expert x moe_ffn_hidden_size
        first_k_dense_replace=3,
        moe_router_topk=8,
        moe_router_num_groups=8,
        moe_router_group_topk=4,
        moe_router_topk_scaling_factor=2.5,
        moe_router_score_function="sigmoid",
        moe_router_enable_expert_bias=True,
        moe_router_bias_update_rate=1e-3,
        moe_router_pre_softmax=True,
        moe_router_load_balancing_type="seq_aux_loss",
        moe_aux_loss_coeff=1e-4,
        moe_router_dtype="fp32",
        vocab_size=129280,
        make_vocab_size_divisible_by=1280,
        seq_length=4096,
        rotary_base=10000.0,
        rotary_scaling_factor=40.0,  # YaRN
        original_max_position_embeddings=4096,
        mscale=1.0,
        mscale_all_dim=1.0,
        norm_epsilon=1e-6,
        qk_layernorm=True,
        init_method_std=0.006,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        mtp_num_layers=1,
        mtp_loss_scaling_factor=0.1,
    )


def proxy_1gpu() -> fdl.Config[ModelConfig]:
    """3.57B proxy that trains on one 80 GB GPU: 8 layers (1 dense), 64 experts top-6."""
    model = deepseek_v3_671b()
    model.num_layers = 8
    model.first_k_dense_replace = 1
    model.hidden_size = 2048
    model.ffn_hidden_size = 8192
    model.num_attention_heads = 16
    model.q_lora_rank = 768
    model.num_moe_experts = 64
    model.moe_router_topk = 6
    model.moe_ffn_hidden_size = 1024
    model.moe_shared_expert_intermediate_size = 1024
    model.vocab_size = 32768
    model.make_vocab_size_divisible_by = 128
    return model


def proxy_multi_gpu() -> fdl.Config[ModelConfig]:
    """Proxy for 2-4 GPUs with expert/pipeline parallelism: the 1-GPU proxy, twice as deep."""
    model = proxy_1gpu()
    model.num_layers = 16
    return model


def proxy_node() -> fdl.Config[ModelConfig]:
    """Proxy for one 8-GPU node: 16 layers, 128 experts top-8 (the 671B routing fan-out)."""
    model = proxy_multi_gpu()
    model.num_moe_experts = 128
    model.moe_router_topk = 8
    return model
