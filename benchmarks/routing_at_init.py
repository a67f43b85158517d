"""How proxy_1gpu's routers load their experts before any training step, on the bench text (issue 30).

On that text the proxy's worst router sent 8.9x the mean load to one expert in step 1, TorchTitan's 2.7x
(`expert_load_per_step` of benchmarks/results/side_by_side/2026-12-07-h100-fp8-h/). Step 1's forward runs
the initial weights, so that difference is the initialisation: the proxy draws every weight, the token
embedding too, from N(0, 0.006) (DeepSeek-V3's initializer_range, as Megatron-Bridge), TorchTitan its
embedding from N(0, 1). This runs one forward of the proxy's architecture at init on CPU and prints each
MoE layer's max/mean tokens per expert, for an embedding std given on the command line.

The modules are Hugging Face's DeepseekV3 (MLA, sigmoid group-limited top-k with the correction bias,
the shared expert) built from proxy_1gpu's model by the config the train side hands Bridge
(train.container.hf_config), initialised as Megatron does (every matrix N(0, std), the attention and MLP
output projections N(0, std / sqrt(2 x layers)), norms 1): a CPU stand-in for Megatron-Core's GPU
modules, not them. One difference: HF scores a group by its top-2 experts, Megatron by its top
topk // group_topk = 1.
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
from transformers import DeepseekV3ForCausalLM

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from the checkout

from dsv3_recipes import recipes  # noqa: E402
from dsv3_recipes.launch.submit import recipe_of  # noqa: E402
from dsv3_recipes.train.container import hf_config  # noqa: E402

TEXT = ROOT / ".bench/bench-text_text_document.bin"  # Megatron's indexed dataset: uint16 token ids
SEQUENCES = 2


def initialise_as_megatron(model: DeepseekV3ForCausalLM, init_std: float, embedding_std: float) -> None:
    """Megatron-Core's init_method / output_layer_init_method for every matrix, then the embedding."""
    output_std = init_std / math.sqrt(2 * model.config.num_hidden_layers)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:  # linear weights, the experts' stacked weights, the router
                is_output = name.endswith(("o_proj.weight", "down_proj.weight", "down_proj"))
                param.normal_(0.0, output_std if is_output else init_std)
            elif "norm" in name:
                param.fill_(1.0)
            else:
                param.zero_()
        model.model.embed_tokens.weight.normal_(0.0, embedding_std)
        for module in model.modules():
            if hasattr(module, "e_score_correction_bias"):
                module.e_score_correction_bias.zero_()  # Megatron's expert bias starts at zero


def loads_at_init(embedding_std: float, seed: int) -> dict[int, list[int]]:
    """Tokens per expert of every MoE layer of proxy_1gpu's model in one forward of the text's first
    SEQUENCES sequences."""
    m = recipe_of(recipes.get("proxy_1gpu")).model
    torch.manual_seed(seed)
    config = hf_config(m)
    config._attn_implementation = "sdpa"
    model = DeepseekV3ForCausalLM(config).eval()
    initialise_as_megatron(model, m.init_method_std, embedding_std)
    tokens = np.memmap(TEXT, dtype=np.uint16, mode="r")[: SEQUENCES * m.seq_length]
    batch = torch.from_numpy(tokens.astype(np.int64)).view(SEQUENCES, m.seq_length)
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
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not TEXT.is_file():
        missing = TEXT.relative_to(ROOT)
        sys.exit(f"routing_at_init: {missing} is missing (dsv3 preprocess of ../shared/bench-text)")
    loads = loads_at_init(args.embedding_std, args.seed)
    max_over_mean = {layer: max(c) / (sum(c) / len(c)) for layer, c in loads.items()}
    result = {
        "command": shlex.join(["python", "benchmarks/routing_at_init.py", *sys.argv[1:]]),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "data": {"kind": "text", "corpus": "bench-text", "sequences": SEQUENCES, "offset": 0},
        "routing": "natural, at initialisation (no step)",
        "embedding_std": args.embedding_std,
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
