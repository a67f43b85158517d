"""A tiny random DeepSeek-V3 Hugging Face checkpoint laid out like the official one: MLA with q/kv
LoRA, YaRN RoPE, a dense first layer, routed + shared experts with group-limited routing, one MTP layer
(with its embedding and head copies), one shard per layer with an index, a byte-level tokenizer, and
optionally FP8 e4m3 weights with 128x128 ``weight_scale_inv`` blocks. Made locally (no network), for
the conversion tests and the GPU verify run:

    python -m conversion.tiny /tmp/tiny-dsv3 [--fp8]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FP8_BLOCK = 128
FP8_MAX = torch.finfo(torch.float8_e4m3fn).max
FP8_QUANTIZATION_CONFIG = {
    "activation_scheme": "dynamic",
    "fmt": "e4m3",
    "quant_method": "fp8",
    "weight_block_size": [FP8_BLOCK, FP8_BLOCK],
}


def tiny_config(**overrides):
    """DeepSeek-V3's structure at toy size. intermediate_size 200 gives FP8 weights a partial second
    block in each direction. Routing is group-limited like DeepSeek-V3's, with top-k / topk_group = 2
    as there (8 / 4): Megatron scores a group by its top-(k / topk_group) experts, transformers by its
    top 2, so other ratios route differently in the two (the verify task shows it)."""
    from transformers import DeepseekV3Config

    settings = dict(
        vocab_size=256,
        hidden_size=128,
        intermediate_size=200,
        moe_intermediate_size=32,
        num_hidden_layers=3,
        first_k_dense_replace=1,
        num_nextn_predict_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        q_lora_rank=64,
        kv_lora_rank=64,
        qk_nope_head_dim=32,
        qk_rope_head_dim=16,
        v_head_dim=32,
        n_routed_experts=16,
        n_shared_experts=1,
        num_experts_per_tok=4,
        n_group=4,
        topk_group=2,
        routed_scaling_factor=2.5,
        max_position_embeddings=512,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 128,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
        },
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
    )
    return DeepseekV3Config(**(settings | overrides))


def quantize_fp8_blockwise(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3's weight format: e4m3 values and one float32 ``scale_inv`` per 128x128 block, so
    that ``weight ~= fp8 * scale_inv`` block by block (edge blocks may be partial)."""
    rows, cols = weight.shape
    blocks = (math.ceil(rows / FP8_BLOCK), math.ceil(cols / FP8_BLOCK))
    scale_inv = torch.empty(blocks, dtype=torch.float32)
    quantized = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(blocks[0]):
        for j in range(blocks[1]):
            rs, cs = slice(i * FP8_BLOCK, (i + 1) * FP8_BLOCK), slice(j * FP8_BLOCK, (j + 1) * FP8_BLOCK)
            block = weight[rs, cs].float()
            scale_inv[i, j] = block.abs().max().clamp_min(1e-12) / FP8_MAX
            quantized[rs, cs] = (block / scale_inv[i, j]).to(torch.float8_e4m3fn)
    return quantized, scale_inv


def is_fp8_weight(name: str) -> bool:
    """The official checkpoint's FP8 tensors: the linear projections (not MTP's eh_proj, the router,
    norms, embeddings or the head)."""
    return name.endswith("proj.weight") and not name.endswith("eh_proj.weight")


def _hf_state_dict(seed: int, **overrides) -> tuple[dict[str, torch.Tensor], object]:
    """The transformers model's weights in the checkpoint naming (per-expert tensors), BF16."""
    from transformers import DeepseekV3ForCausalLM

    config = tiny_config(**overrides)
    torch.manual_seed(seed)
    model = DeepseekV3ForCausalLM(config).to(torch.bfloat16)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)  # writes the legacy per-expert layout the official checkpoint uses
        return load_file(f"{tmp}/model.safetensors"), model.config


def _add_mtp_layers(weights: dict[str, torch.Tensor], config, generator: torch.Generator) -> None:
    """transformers does not build the MTP layers: add them as the official checkpoint stores them."""
    last, h = config.num_hidden_layers - 1, config.hidden_size
    decoder_layer = {name: t for name, t in weights.items() if name.startswith(f"model.layers.{last}.")}
    for mtp in range(config.num_hidden_layers, config.num_hidden_layers + config.num_nextn_predict_layers):
        for name, tensor in decoder_layer.items():
            copy = torch.randn(tensor.shape, generator=generator) * config.initializer_range
            weights[name.replace(f".{last}.", f".{mtp}.", 1)] = copy.to(tensor.dtype)
        for norm in ("enorm", "hnorm", "shared_head.norm"):
            weights[f"model.layers.{mtp}.{norm}.weight"] = (
                1 + 0.1 * torch.randn(h, generator=generator)
            ).bfloat16()
        weights[f"model.layers.{mtp}.eh_proj.weight"] = (
            0.02 * torch.randn(h, 2 * h, generator=generator)
        ).bfloat16()
        weights[f"model.layers.{mtp}.embed_tokens.weight"] = weights["model.embed_tokens.weight"].clone()
        weights[f"model.layers.{mtp}.shared_head.head.weight"] = weights["lm_head.weight"].clone()


def _randomise_routing(weights: dict[str, torch.Tensor], generator: torch.Generator) -> None:
    """Decisive routers and nonzero expert-bias corrections (float32, as in the official checkpoint),
    so routing is exercised and near-ties do not turn BF16 noise into a different expert choice."""
    for name, tensor in weights.items():
        if name.endswith("mlp.gate.weight"):
            weights[name] = (0.3 * torch.randn(tensor.shape, generator=generator)).bfloat16()
        elif name.endswith("e_score_correction_bias"):
            weights[name] = 0.05 * torch.randn(tensor.shape, generator=generator, dtype=torch.float32)


def _shard_of(name: str, num_shards: int) -> int:
    if name.startswith("model.layers."):
        return int(name.split(".")[2]) + 1
    return 0 if name == "model.embed_tokens.weight" else num_shards - 1


def _save_tokenizer(path: Path) -> None:
    """A byte-level BPE with no merges: 256 tokens, one per byte, any text encodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {char: i for i, char in enumerate(bytes_to_unicode().values())}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=list(vocab)[1]).save_pretrained(path)


def make_tiny_checkpoint(
    path: str | Path, *, fp8: bool = False, seed: int = 0, **config_overrides
) -> dict[str, torch.Tensor]:
    """Write the checkpoint to ``path`` (created) and return its tensors as stored."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    weights, config = _hf_state_dict(seed, **config_overrides)
    generator = torch.Generator().manual_seed(seed + 1)
    _randomise_routing(weights, generator)
    _add_mtp_layers(weights, config, generator)
    if fp8:
        for name in [n for n in weights if is_fp8_weight(n)]:
            weights[name], weights[name + "_scale_inv"] = quantize_fp8_blockwise(weights[name])
        config.quantization_config = FP8_QUANTIZATION_CONFIG
    config.save_pretrained(out)
    num_shards = config.num_hidden_layers + config.num_nextn_predict_layers + 2
    shards: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in weights.items():
        shards.setdefault(f"model-{_shard_of(name, num_shards) + 1:05d}-of-{num_shards:05d}.safetensors", {})[
            name
        ] = tensor
    for filename, tensors in shards.items():
        save_file(tensors, out / filename, metadata={"format": "pt"})
    index = {
        "metadata": {"total_size": sum(t.numel() * t.element_size() for t in weights.values())},
        "weight_map": {name: filename for filename, tensors in shards.items() for name in sorted(tensors)},
    }
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    _save_tokenizer(out)
    return weights


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path")
    p.add_argument("--fp8", action="store_true", help="store the projections as FP8 e4m3 with block scales")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    make_tiny_checkpoint(args.path, fp8=args.fp8, seed=args.seed)
    print(f"wrote a tiny DeepSeek-V3 checkpoint to {args.path}")


if __name__ == "__main__":
    main()
