"""Write a Megatron model as a Hugging Face safetensors directory laid out like its reference (train side).

Bridge converts the weights (``export_hf_weights``) and writes config and tokenizer
(``save_artifacts``). The shards are written here, each into the reference's file name, because:
- DeepSeek-V3's MTP layers store copies of the embedding and the output head
  (``model.layers.<L+i>.embed_tokens.weight``, ``...shared_head.head.weight``; the official checkpoint's
  copies equal ``model.embed_tokens.weight`` and ``lm_head.weight``). Megatron keeps one shared
  tensor and Bridge 0.6.2 has no mapping for the copies, so they are written from the shared tensor.
- An FP8 reference's ``*_scale_inv`` tensors are never produced (the export is BF16): Bridge's writer
  would hold every shard that lists one, i.e. the whole model, in host memory until the end. Here the
  expected set leaves them out, so each shard is written as soon as it is complete.
- Completeness is checked against exactly that set, and the output always gets an index.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch
from megatron.bridge import AutoBridge
from safetensors.torch import save_file

from conversion.checks import INDEX_FILE, SCALE_SUFFIX, HFCheckpoint
from conversion.distributed import Ranks
from dsv3_recipes.recipe.schema import RecipeError


def mtp_shared_copies(reference: HFCheckpoint, with_mtp: bool) -> dict[str, list[str]]:
    """Main-model tensor -> the MTP copies of it that the reference holds."""
    first_mtp = reference.config["num_hidden_layers"]
    layers = range(first_mtp, first_mtp + reference.num_mtp_layers) if with_mtp else range(0)
    copies = {
        "model.embed_tokens.weight": [f"model.layers.{i}.embed_tokens.weight" for i in layers],
        "lm_head.weight": [f"model.layers.{i}.shared_head.head.weight" for i in layers],
    }
    return {main: [c for c in names if c in reference.tensors] for main, names in copies.items()}


def expected_tensors(reference: HFCheckpoint, with_mtp: bool) -> set[str]:
    first_mtp = reference.config["num_hidden_layers"]
    mtp_prefixes = tuple(f"model.layers.{i}." for i in range(first_mtp, first_mtp + reference.num_mtp_layers))
    return {
        name
        for name in reference.tensors
        if not name.endswith(SCALE_SUFFIX) and (with_mtp or not name.startswith(mtp_prefixes))
    }


def _with_copies(
    weights: Iterable[tuple[str, torch.Tensor]], copies: Mapping[str, list[str]]
) -> Iterator[tuple[str, torch.Tensor]]:
    for name, tensor in weights:
        yield name, tensor
        for copy in copies.get(name, ()):
            yield copy, tensor.clone()  # safetensors refuses tensors sharing memory within a file


def save_hf(
    bridge: AutoBridge, model: list, out: Path, reference: HFCheckpoint, with_mtp: bool, ranks: Ranks
) -> None:
    """Collective: every rank converts (Bridge gathers each full tensor on all ranks), rank 0 writes
    config, tokenizer, shards and index."""
    weights = _with_copies(
        bridge.export_hf_weights(model, cpu=True, show_progress=ranks.is_writer),
        mtp_shared_copies(reference, with_mtp),
    )
    if ranks.is_writer:
        bridge.hf_pretrained.save_artifacts(out)  # config.json without quantization_config, tokenizer
        if not with_mtp:
            _disable_mtp_in_config(out / "config.json")
        shard_of = {name: reference.tensors[name].shard for name in expected_tensors(reference, with_mtp)}
        write_shards(weights, out, shard_of)
    else:
        for _ in weights:  # the conversion's collectives need every rank
            pass
    ranks.barrier()


def _disable_mtp_in_config(config_file: Path) -> None:
    config = json.loads(config_file.read_text())
    config["num_nextn_predict_layers"] = 0
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_shards(weights: Iterable[tuple[str, torch.Tensor]], out: Path, shard_of: Mapping[str, str]) -> None:
    """Write each shard of ``shard_of`` (tensor -> file) once all its tensors have arrived, so host
    memory holds about one shard; then the index. Refuses tensors the reference lacks, and missing ones."""
    pending: dict[str, set[str]] = defaultdict(set)
    for name, shard in shard_of.items():
        pending[shard].add(name)
    buffered: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    weight_map: dict[str, str] = {}
    total_size = 0
    for name, tensor in weights:
        shard = shard_of.get(name)
        if shard is None:
            raise RecipeError(
                "--hf-reference", f"the Megatron model has {name}, which the reference does not"
            )
        buffered[shard][name] = tensor.contiguous()
        pending[shard].discard(name)
        if not pending[shard]:
            tensors = buffered.pop(shard)
            save_file(tensors, out / shard, metadata={"format": "pt"})
            weight_map |= dict.fromkeys(tensors, shard)
            total_size += sum(t.numel() * t.element_size() for t in tensors.values())
            del pending[shard]
    missing = sorted(name for names in pending.values() for name in names)
    if missing:
        raise RecipeError(
            "--hf-path",
            f"export incomplete: {len(missing)} reference tensors were not produced, first {missing[0]}",
        )
    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
