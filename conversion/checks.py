"""What a conversion needs to be true before it starts: the source is a complete DeepSeek-V3 checkpoint,
the target parallel layout splits the model, the output does not exist yet.

Standard library only: the launch side runs these before anything is submitted, and every task runs
them again inside the job (cluster paths are often visible only there). Safetensors shards are read
header-only, so checking the 671B checkpoint's 163 shards takes a second.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dsv3_recipes.recipe.schema import RecipeError

MODEL_TYPE = "deepseek_v3"
ARCHITECTURE = "DeepseekV3ForCausalLM"
INDEX_FILE = "model.safetensors.index.json"
FP8_DTYPES = ("F8_E4M3", "F8_E5M2")
SCALE_SUFFIX = "_scale_inv"
FP8_BLOCK = 128  # Megatron-Bridge's DeepSeek-V3 dequantization assumes 128x128 weight blocks
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
_CONFIG_KEYS = (
    "hidden_size",
    "vocab_size",
    "num_attention_heads",
    "num_hidden_layers",
    "kv_lora_rank",
    "qk_nope_head_dim",
    "qk_rope_head_dim",
    "v_head_dim",
    "intermediate_size",
    "moe_intermediate_size",
    "n_routed_experts",
    "n_shared_experts",
    "first_k_dense_replace",
)


@dataclass(frozen=True)
class Parallelism:
    """The model-parallel layout a conversion runs at. Megatron's torch_dist checkpoints reshard on
    load, so this sets how many GPUs share the conversion, not the layout training must use."""

    tp: int = 1
    pp: int = 1
    ep: int = 1

    @property
    def world_size(self) -> int:
        """Ranks needed: PP stages of lcm(TP, EP) ranks (dense layers split by TP, experts by EP)."""
        return self.pp * math.lcm(self.tp, self.ep)


@dataclass(frozen=True)
class Tensor:
    dtype: str
    shape: tuple[int, ...]
    shard: str


@dataclass(frozen=True)
class HFCheckpoint:
    path: Path
    config: dict
    tensors: dict[str, Tensor]
    has_tokenizer: bool

    @property
    def num_mtp_layers(self) -> int:
        return self.config.get("num_nextn_predict_layers") or 0

    @property
    def is_fp8(self) -> bool:
        return any(t.dtype in FP8_DTYPES for t in self.tensors.values())


def check_hf_checkpoint(path: str | Path, arg: str) -> HFCheckpoint:
    """A DeepSeek-V3 HF checkpoint: its config, every shard present and whole, every tensor the
    shape its config implies, FP8 weights with their block scales."""
    root = Path(path)
    if not root.is_dir():
        raise RecipeError(arg, f"{root} is not a directory")
    config = _read_config(root, arg)
    tensors = _read_tensors(root, arg)
    _check_tensors(tensors, config, arg)
    return HFCheckpoint(
        path=root,
        config=config,
        tensors=tensors,
        has_tokenizer=any((root / name).is_file() for name in TOKENIZER_FILES),
    )


def _read_config(root: Path, arg: str) -> dict:
    config_file = root / "config.json"
    if not config_file.is_file():
        raise RecipeError(arg, f"{root} has no config.json: not a Hugging Face checkpoint")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise RecipeError(arg, f"{config_file} is not valid JSON ({e})") from None
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    if model_type != MODEL_TYPE or ARCHITECTURE not in architectures:
        raise RecipeError(
            arg,
            f"{root} is not a DeepSeek-V3 checkpoint: config.json has model_type {model_type!r} and "
            f"architectures {architectures}; expected {MODEL_TYPE!r} and [{ARCHITECTURE!r}]",
        )
    missing = [key for key in _CONFIG_KEYS if config.get(key) is None]
    if missing:
        raise RecipeError(arg, f"{config_file} lacks {', '.join(missing)}")
    block = (config.get("quantization_config") or {}).get("weight_block_size")
    if block is not None and list(block) != [FP8_BLOCK, FP8_BLOCK]:
        raise RecipeError(
            arg, f"FP8 weight_block_size {block} is not supported; allowed: [{FP8_BLOCK}, {FP8_BLOCK}]"
        )
    return config


def _read_tensors(root: Path, arg: str) -> dict[str, Tensor]:
    """Tensor name -> dtype, shape and shard, from the index (if any) and each shard's header."""
    index_file = root / INDEX_FILE
    if index_file.is_file():
        weight_map: dict[str, str] = json.loads(index_file.read_text()).get("weight_map", {})
        shards = sorted(set(weight_map.values()))
        absent = [s for s in shards if not (root / s).is_file()]
        if absent:
            raise RecipeError(
                arg,
                f"{len(absent)} of {len(shards)} shards listed in {INDEX_FILE} are missing, "
                f"first {absent[0]}",
            )
    else:
        weight_map = {}
        shards = sorted(p.name for p in root.glob("*.safetensors"))
        if not shards:
            raise RecipeError(arg, f"{root} holds no *.safetensors weights")
    tensors: dict[str, Tensor] = {}
    for shard in shards:
        for name, (dtype, shape) in read_safetensors_header(root / shard, arg).items():
            tensors[name] = Tensor(dtype, shape, shard)
    unlisted = [
        name for name, shard in weight_map.items() if name not in tensors or tensors[name].shard != shard
    ]
    if unlisted:
        raise RecipeError(
            arg, f"{INDEX_FILE} maps {unlisted[0]} to {weight_map[unlisted[0]]}, which does not hold it"
        )
    return tensors


def read_safetensors_header(path: Path, arg: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Name -> (dtype, shape) of one safetensors file; a truncated or foreign file is refused."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        if size < 8 or header_len > size - 8:
            raise RecipeError(arg, f"{path.name} is not a safetensors file")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RecipeError(arg, f"{path.name} has a corrupt safetensors header") from None
    header.pop("__metadata__", None)
    data_end = max((entry["data_offsets"][1] for entry in header.values()), default=0)
    if 8 + header_len + data_end > size:
        raise RecipeError(
            arg, f"{path.name} is truncated ({size} bytes, header says {8 + header_len + data_end})"
        )
    return {name: (entry["dtype"], tuple(entry["shape"])) for name, entry in header.items()}


_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_EXPERT = re.compile(r"mlp\.experts\.(\d+)\.")


def expected_tensors(config: Mapping) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """Every tensor a DeepSeek-V3 checkpoint with this config holds, with its shape; and the optional
    ones (the MTP layers' copies of the embedding and output head, which Megatron shares)."""
    h, v = config["hidden_size"], config["vocab_size"]
    heads, kv_rank, q_rank = config["num_attention_heads"], config["kv_lora_rank"], config.get("q_lora_rank")
    nope, rope, v_dim = config["qk_nope_head_dim"], config["qk_rope_head_dim"], config["v_head_dim"]
    dense_ffn, moe_ffn = config["intermediate_size"], config["moe_intermediate_size"]
    shared_ffn, experts = moe_ffn * config["n_shared_experts"], config["n_routed_experts"]
    num_layers = config["num_hidden_layers"]

    def mlp(prefix: str, ffn: int) -> dict[str, tuple[int, ...]]:
        return {
            f"{prefix}gate_proj.weight": (ffn, h),
            f"{prefix}up_proj.weight": (ffn, h),
            f"{prefix}down_proj.weight": (h, ffn),
        }

    attention = {
        "input_layernorm.weight": (h,),
        "post_attention_layernorm.weight": (h,),
        "self_attn.kv_a_proj_with_mqa.weight": (kv_rank + rope, h),
        "self_attn.kv_a_layernorm.weight": (kv_rank,),
        "self_attn.kv_b_proj.weight": (heads * (nope + v_dim), kv_rank),
        "self_attn.o_proj.weight": (h, heads * v_dim),
    }
    if q_rank:
        attention |= {
            "self_attn.q_a_proj.weight": (q_rank, h),
            "self_attn.q_a_layernorm.weight": (q_rank,),
            "self_attn.q_b_proj.weight": (heads * (nope + rope), q_rank),
        }
    else:
        attention["self_attn.q_proj.weight"] = (heads * (nope + rope), h)
    moe = {"mlp.gate.weight": (experts, h), "mlp.gate.e_score_correction_bias": (experts,)}
    moe |= mlp("mlp.shared_experts.", shared_ffn)
    for e in range(experts):
        moe |= mlp(f"mlp.experts.{e}.", moe_ffn)
    mtp = {
        "enorm.weight": (h,),
        "hnorm.weight": (h,),
        "eh_proj.weight": (h, 2 * h),
        "shared_head.norm.weight": (h,),
    }

    required = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    optional = {}
    for i in range(num_layers + (config.get("num_nextn_predict_layers") or 0)):
        layer = attention | (mlp("mlp.", dense_ffn) if i < config["first_k_dense_replace"] else moe)
        if i >= num_layers:
            layer |= mtp
            optional |= {
                f"model.layers.{i}.embed_tokens.weight": (v, h),
                f"model.layers.{i}.shared_head.head.weight": (v, h),
            }
        required |= {f"model.layers.{i}.{name}": shape for name, shape in layer.items()}
    return required, optional


def _check_tensors(tensors: Mapping[str, Tensor], config: Mapping, arg: str) -> None:
    required, optional = expected_tensors(config)
    total_layers = config["num_hidden_layers"] + (config.get("num_nextn_predict_layers") or 0)

    def refuse(name: str, problem: str) -> None:
        raise RecipeError(arg, f"{name} (in {tensors[name].shard}) {problem}")

    for name, tensor in tensors.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        expected = required.get(name) or optional.get(name)
        if expected is None:
            layer = _LAYER.fullmatch(name)
            expert = _EXPERT.match(layer[2]) if layer else None
            if layer and int(layer[1]) >= total_layers:
                refuse(name, f"is beyond the {total_layers} layers (MTP included) that config.json declares")
            if expert and int(expert[1]) >= config["n_routed_experts"]:
                refuse(
                    name, f"is beyond the {config['n_routed_experts']} routed experts config.json declares"
                )
            continue  # a tensor Megatron does not use (e.g. rotary inv_freq): left out of the conversion
        if tensor.shape != expected:
            refuse(name, f"has shape {list(tensor.shape)}, config.json implies {list(expected)}")
        if tensor.dtype in FP8_DTYPES:
            _check_fp8_scale(name, tensor, tensors, refuse)
    absent = [name for name in required if name not in tensors]
    if absent:
        raise RecipeError(
            arg, f"{len(absent)} tensors config.json implies are in no shard, first {absent[0]}"
        )


def _check_fp8_scale(name: str, tensor: Tensor, tensors: Mapping[str, Tensor], refuse) -> None:
    """FP8 weights need their 128x128 block scales: without one, Bridge would cast without scaling."""
    scale = tensors.get(name + SCALE_SUFFIX)
    if scale is None:
        refuse(name, f"is {tensor.dtype} but has no {name + SCALE_SUFFIX}")
    rows, cols = tensor.shape
    blocks = (math.ceil(rows / FP8_BLOCK), math.ceil(cols / FP8_BLOCK))
    if scale.shape != blocks:
        refuse(
            name + SCALE_SUFFIX,
            f"has shape {list(scale.shape)}, {FP8_BLOCK}x{FP8_BLOCK} blocks need {list(blocks)}",
        )


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def check_parallelism(config: Mapping, parallel: Parallelism) -> None:
    """The layout must split heads over TP, routed experts over EP and (uniform) layers over PP."""
    for arg, size in (("--tp", parallel.tp), ("--pp", parallel.pp), ("--ep", parallel.ep)):
        if not isinstance(size, int) or size < 1:
            raise RecipeError(arg, f"must be a positive integer, got {size!r}")
    for arg, size, what, total in (
        ("--tp", parallel.tp, "attention heads", config["num_attention_heads"]),
        ("--ep", parallel.ep, "routed experts", config["n_routed_experts"]),
        ("--pp", parallel.pp, "decoder layers", config["num_hidden_layers"]),
    ):
        if total % size:
            raise RecipeError(
                arg, f"{total} {what} do not split into {size} equal parts; allowed: {_divisors(total)}"
            )


def check_output_dir(path: str | Path, arg: str) -> Path:
    """Conversions never write into existing data: the output must be absent or an empty directory."""
    out = Path(path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RecipeError(arg, f"{out} already exists and is not an empty directory; choose a new path")
    return out


def check_megatron_checkpoint(path: str | Path, arg: str) -> Path:
    """A Megatron-Bridge torch_dist checkpoint (the top directory or one iter_* directory)."""
    root = Path(path)
    if not root.is_dir():
        raise RecipeError(arg, f"{root} is not a directory")
    iterations = sorted(root.glob("iter_*/run_config.yaml"))
    checkpoint = iterations[-1].parent if iterations else root
    missing = [name for name in ("run_config.yaml", ".metadata") if not (checkpoint / name).is_file()]
    if missing:
        raise RecipeError(
            arg,
            f"{root} is not a Megatron-Bridge torch_dist checkpoint (no iter_*/{missing[0]}); "
            "make one with `dsv3 convert import`",
        )
    return checkpoint
