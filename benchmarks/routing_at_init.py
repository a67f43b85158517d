"""How proxy_1gpu's routers load their experts before any training step, on the bench text (issue 30).

On that text the proxy's worst router sent 8.9x the mean load to one expert in step 1, TorchTitan's 2.7x
(`expert_load_per_step` of benchmarks/results/side_by_side/2026-12-07-h100-fp8-h/). Step 1's forward runs
the initial weights, so that difference is the initialisation: the proxy draws every weight, the token
embedding too, from N(0, 0.006) (DeepSeek-V3's initializer_range, as Megatron-Bridge), TorchTitan its
embedding from N(0, 1). This runs one forward of the proxy's architecture at init on CPU and prints each
MoE layer's max/mean tokens per expert, for an embedding std given on the command line.

The modules are Hugging Face's DeepseekV3 (MLA, sigmoid group-limited top-k with the correction bias,
the shared expert), initialised as Megatron does (every matrix N(0, std), the attention and MLP output
projections N(0, std / sqrt(2 x layers)), norms 1): a CPU stand-in for Megatron-Core's GPU modules, not
them. One difference: HF scores a group by its top-2 experts, Megatron by its top topk // group_topk = 1.
    python benchmarks/routing_at_init.py --embedding-std 0.006 --seed 0 --out OUT.json   # ~140 s, 2 CPUs
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

ROOT = Path(__file__).resolve().parent.parent
TEXT = ROOT / ".bench/bench-text_text_document.bin"  # Megatron's indexed dataset: uint16 token ids
SEQUENCES, SEQ_LENGTH = 2, 4096
INIT_STD = 0.006  # recipe/models.py deepseek_v3_671b: init_method_std


def proxy_config(layers: int) -> DeepseekV3Config:
    """recipe/models.py proxy_1gpu in Hugging Face's names."""
    return DeepseekV3Config(
        vocab_size=32768,
        hidden_size=2048,
        intermediate_size=8192,
        moe_intermediate_size=1024,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=16,
        n_shared_experts=1,
        n_routed_experts=64,
        num_experts_per_tok=6,
        n_group=8,
        topk_group=4,
        first_k_dense_replace=1,
        routed_scaling_factor=2.5,
        norm_topk_prob=True,
        q_lora_rank=768,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        max_position_embeddings=SEQ_LENGTH,
        rms_norm_eps=1e-6,
        attn_implementation="sdpa",
    )


def initialise_as_megatron(model: DeepseekV3ForCausalLM, layers: int, embedding_std: float) -> None:
    """Megatron-Core's init_method / output_layer_init_method for every matrix, then the embedding."""
    output_std = INIT_STD / math.sqrt(2 * layers)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:  # linear weights, the experts' stacked weights, the router
                is_output = name.endswith(("o_proj.weight", "down_proj.weight", "down_proj"))
                param.normal_(0.0, output_std if is_output else INIT_STD)
            elif "norm" in name:
                param.fill_(1.0)
            else:
                param.zero_()
        model.model.embed_tokens.weight.normal_(0.0, embedding_std)
        for module in model.modules():
            if hasattr(module, "e_score_correction_bias"):
                module.e_score_correction_bias.zero_()  # Megatron's expert bias starts at zero


def loads_at_init(embedding_std: float, seed: int, layers: int) -> dict[int, list[int]]:
    """Tokens per expert of every MoE layer in one forward of the first SEQUENCES x SEQ_LENGTH tokens."""
    torch.manual_seed(seed)
    config = proxy_config(layers)
    model = DeepseekV3ForCausalLM(config).eval()
    initialise_as_megatron(model, layers, embedding_std)
    tokens = np.memmap(TEXT, dtype=np.uint16, mode="r")[: SEQUENCES * SEQ_LENGTH]
    batch = torch.from_numpy(tokens.astype(np.int64)).view(SEQUENCES, SEQ_LENGTH)
    loads: dict[int, list[int]] = {}

    def record(layer: int):
        def hook(moe, args, _output):
            chosen, _ = moe.route_tokens_to_experts(moe.gate(args[0]))
            loads[layer] = torch.bincount(chosen.flatten(), minlength=config.n_routed_experts).tolist()

        return hook

    for i, layer in enumerate(model.model.layers):
        if hasattr(layer.mlp, "gate"):
            layer.mlp.register_forward_hook(record(i))
    with torch.no_grad():
        model(batch)
    return loads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedding-std", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, default=8, help="proxy_1gpu has 8 (1 dense)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not TEXT.is_file():
        missing = TEXT.relative_to(ROOT)
        sys.exit(f"routing_at_init: {missing} is missing (dsv3 preprocess of ../shared/bench-text)")
    loads = loads_at_init(args.embedding_std, args.seed, args.layers)
    max_over_mean = {layer: max(c) / (sum(c) / len(c)) for layer, c in loads.items()}
    result = {
        "command": shlex.join(["python", "benchmarks/routing_at_init.py", *sys.argv[1:]]),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "data": {"kind": "text", "corpus": "bench-text", "tokens": SEQUENCES * SEQ_LENGTH, "offset": 0},
        "routing": "natural, at initialisation (no step)",
        "embedding_std": args.embedding_std,
        "init_std": INIT_STD,
        "seed": args.seed,
        "tokens_per_expert": loads,
        "max_over_mean": max_over_mean,
        "worst_router_max_over_mean": max(max_over_mean.values()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    worst = result["worst_router_max_over_mean"]
    print(f"embedding std {args.embedding_std}, seed {args.seed}: worst router {worst:.2f}x the mean")


if __name__ == "__main__":
    main()
