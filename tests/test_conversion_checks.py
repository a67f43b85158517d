"""Launch-side refusals of bad conversion input, and the write-then-rename staging (standard library
only: checkpoints here are safetensors headers over zero bytes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conversion import checks
from conversion.checks import Parallelism
from conversion.staging import staged_directory
from dsv3_recipes.recipe.schema import RecipeError

CONFIG = {
    "model_type": "deepseek_v3",
    "architectures": ["DeepseekV3ForCausalLM"],
    "hidden_size": 16,
    "vocab_size": 32,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_nextn_predict_layers": 1,
    "first_k_dense_replace": 1,
    "q_lora_rank": 8,
    "kv_lora_rank": 8,
    "qk_nope_head_dim": 4,
    "qk_rope_head_dim": 4,
    "v_head_dim": 4,
    "intermediate_size": 24,
    "moe_intermediate_size": 8,
    "n_routed_experts": 4,
    "n_shared_experts": 1,
}
BYTES = {"BF16": 2, "F32": 4, "F8_E4M3": 1}


def write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        size = math.prod(shape) * BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + bytes(offset))


def write_checkpoint(root: Path, config: dict = CONFIG, tensors: dict | None = None) -> dict:
    """One shard per layer plus one for the rest, with an index, like the official checkpoint."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config))
    if tensors is None:
        required, _ = checks.expected_tensors(config)
        tensors = {name: ("BF16", shape) for name, shape in required.items()}
    shards: dict[str, dict] = {}
    for name, spec in tensors.items():
        shard = (
            f"layer-{name.split('.')[2]}.safetensors"
            if name.startswith("model.layers.")
            else "rest.safetensors"
        )
        shards.setdefault(shard, {})[name] = spec
    for shard, shard_tensors in shards.items():
        write_safetensors(root / shard, shard_tensors)
    weight_map = {name: shard for shard, names in shards.items() for name in names}
    (root / checks.INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return tensors


def refusal(path: Path, arg: str = "--hf-path") -> str:
    with pytest.raises(RecipeError) as e:
        checks.check_hf_checkpoint(path, arg)
    assert str(e.value).startswith(f"{arg}: ")
    return str(e.value)


def test_a_complete_checkpoint_is_accepted(tmp_path):
    tensors = write_checkpoint(tmp_path)
    checkpoint = checks.check_hf_checkpoint(tmp_path, "--hf-path")
    assert set(checkpoint.tensors) == set(tensors)
    assert (checkpoint.num_mtp_layers, checkpoint.is_fp8, checkpoint.has_tokenizer) == (1, False, False)
    assert checkpoint.tensors["model.layers.2.eh_proj.weight"].shard == "layer-2.safetensors"


def test_not_a_deepseek_v3_directory(tmp_path):
    assert "is not a directory" in refusal(tmp_path / "absent")
    assert "has no config.json" in refusal(tmp_path)
    write_checkpoint(tmp_path, config=CONFIG | {"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    assert "is not a DeepSeek-V3 checkpoint: config.json has model_type 'llama'" in refusal(tmp_path)


def test_missing_and_truncated_shards(tmp_path):
    write_checkpoint(tmp_path)
    (tmp_path / "layer-1.safetensors").unlink()
    assert "1 of 4 shards listed in model.safetensors.index.json are missing, first layer-1" in refusal(
        tmp_path
    )
    write_checkpoint(tmp_path)
    shard = tmp_path / "layer-0.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    assert "layer-0.safetensors is truncated" in refusal(tmp_path)


def test_shape_mismatch_names_the_tensor(tmp_path):
    tensors = write_checkpoint(tmp_path)
    tensors["model.layers.1.mlp.experts.3.down_proj.weight"] = ("BF16", (16, 9))
    write_checkpoint(tmp_path, tensors=tensors)
    assert refusal(tmp_path) == (
        "--hf-path: model.layers.1.mlp.experts.3.down_proj.weight (in layer-1.safetensors) "
        "has shape [16, 9], config.json implies [16, 8]"
    )


def test_tensors_missing_or_beyond_the_config(tmp_path):
    tensors = write_checkpoint(tmp_path)
    del tensors["model.layers.1.mlp.experts.2.up_proj.weight"]
    write_checkpoint(tmp_path / "missing", tensors=tensors)
    assert (
        "1 tensors config.json implies are in no shard, first model.layers.1.mlp.experts.2.up_proj"
        in refusal(tmp_path / "missing")
    )
    extra = write_checkpoint(tmp_path / "extra")
    extra["model.layers.1.mlp.experts.4.up_proj.weight"] = ("BF16", (8, 16))
    write_checkpoint(tmp_path / "extra", tensors=extra)
    assert "beyond the 4 routed experts" in refusal(tmp_path / "extra")


def test_fp8_weights_need_their_block_scales(tmp_path):
    tensors = write_checkpoint(tmp_path)
    name = "model.layers.0.mlp.gate_proj.weight"  # [24, 16]: one 128x128 block
    tensors[name] = ("F8_E4M3", (24, 16))
    write_checkpoint(tmp_path / "unscaled", tensors=tensors)
    assert f"{name} (in layer-0.safetensors) is F8_E4M3 but has no {name}_scale_inv" in refusal(
        tmp_path / "unscaled"
    )
    write_checkpoint(tmp_path / "bad", tensors=tensors | {name + "_scale_inv": ("F32", (2, 1))})
    assert "has shape [2, 1], 128x128 blocks need [1, 1]" in refusal(tmp_path / "bad")
    write_checkpoint(tmp_path / "good", tensors=tensors | {name + "_scale_inv": ("F32", (1, 1))})
    assert checks.check_hf_checkpoint(tmp_path / "good", "--hf-path").is_fp8
    fp8_config = CONFIG | {"quantization_config": {"weight_block_size": [64, 64]}}
    write_checkpoint(tmp_path / "blocks", config=fp8_config)
    assert "weight_block_size [64, 64] is not supported; allowed: [128, 128]" in refusal(tmp_path / "blocks")


@pytest.mark.parametrize(
    ("parallel", "message"),
    [
        (Parallelism(tp=3), "--tp: 4 attention heads do not split into 3 equal parts; allowed: 1, 2, 4"),
        (Parallelism(ep=3), "--ep: 4 routed experts do not split into 3 equal parts; allowed: 1, 2, 4"),
        (Parallelism(pp=4), "--pp: 2 decoder layers do not split into 4 equal parts; allowed: 1, 2"),
        (Parallelism(tp=0), "--tp: must be a positive integer, got 0"),
    ],
)
def test_parallel_layouts_the_model_cannot_split_into(parallel, message):
    with pytest.raises(RecipeError, match=f"^{message}$"):
        checks.check_parallelism(CONFIG, parallel)


def test_ranks_a_layout_needs():
    checks.check_parallelism(CONFIG, Parallelism(tp=2, pp=2, ep=4))
    assert Parallelism(tp=2, pp=2, ep=4).world_size == 8
    assert Parallelism(tp=2, pp=1, ep=64).world_size == 64  # DeepSeek-V3 671B on 64 GPUs
    assert Parallelism(tp=4, pp=2, ep=6).world_size == 24


def test_output_must_be_absent_or_empty(tmp_path):
    assert checks.check_output_dir(tmp_path / "new", "--megatron-path") == tmp_path / "new"
    checks.check_output_dir(tmp_path, "--megatron-path")  # empty directory
    (tmp_path / "file").write_text("x")
    for path in (tmp_path, tmp_path / "file"):
        with pytest.raises(
            RecipeError, match="^--megatron-path: .* already exists and is not an empty directory"
        ):
            checks.check_output_dir(path, "--megatron-path")


def test_megatron_checkpoint_layout(tmp_path):
    with pytest.raises(
        RecipeError, match="^--megatron-path: .* is not a Megatron-Bridge torch_dist checkpoint"
    ):
        checks.check_megatron_checkpoint(tmp_path, "--megatron-path")
    for iteration in ("iter_0000000", "iter_0000500"):
        (tmp_path / iteration).mkdir()
        (tmp_path / iteration / "run_config.yaml").write_text("model: {}\n")
        (tmp_path / iteration / ".metadata").write_bytes(b"")
    assert checks.check_megatron_checkpoint(tmp_path, "--megatron-path") == tmp_path / "iter_0000500"
    assert checks.check_megatron_checkpoint(tmp_path / "iter_0000000", "--x") == tmp_path / "iter_0000000"


def test_staging_renames_only_a_finished_output(tmp_path):
    final = tmp_path / "out"
    (tmp_path / "out.partial").mkdir()
    (tmp_path / "out.partial" / "stale").write_text("from a killed run")
    with staged_directory(final, "--megatron-path", is_writer=True) as staging:
        assert staging == tmp_path / "out.partial" and not any(staging.iterdir())
        (staging / "weights").write_text("done")
    assert (final / "weights").read_text() == "done" and not (tmp_path / "out.partial").exists()

    failed = tmp_path / "failed"
    with pytest.raises(OSError), staged_directory(failed, "--megatron-path", is_writer=True) as staging:
        (staging / "half").write_text("half written")
        raise OSError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    with pytest.raises(RecipeError, match="already exists"), staged_directory(final, "--x", is_writer=True):
        pass
