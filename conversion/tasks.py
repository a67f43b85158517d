"""The conversion tasks NeMo-Run launches, one function each, run on every rank of the job.

Heavy imports live inside the bodies so the launch side can put these functions into a ``run.Partial``
without torch. Each task first re-runs the launch-side checks (paths are often visible only inside the
job), then writes its output under ``<output>.partial`` and renames it into place when all ranks are done.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from conversion import checks
from conversion.checks import Parallelism
from dsv3_recipes.launch import code_check
from dsv3_recipes.recipe.schema import RecipeError


class VerifyFailed(RuntimeError):
    """The Megatron logits are out of the verify bounds (the report says by how much)."""


def import_hf(hf_path: str, megatron_path: str, tp: int = 1, pp: int = 1, ep: int = 1) -> None:
    """HF checkpoint (BF16, or FP8 with 128x128 block scales: dequantized to BF16 on load) -> a
    Megatron-Bridge torch_dist checkpoint (``<megatron_path>/iter_0000000``), converted at TP/PP/EP."""
    code_check.check()
    parallel = Parallelism(tp, pp, ep)
    source = checks.check_hf_checkpoint(hf_path, "--hf-path")
    checks.check_parallelism(source.config, parallel)
    checks.check_output_dir(megatron_path, "--megatron-path")

    from conversion.distributed import model_parallel
    from conversion.models import bridge_for, model_from_hf
    from conversion.staging import staged_directory

    bridge = bridge_for(hf_path)
    with model_parallel(parallel) as ranks:
        model = model_from_hf(bridge, parallel)
        with staged_directory(
            megatron_path, "--megatron-path", is_writer=ranks.is_writer, barrier=ranks.barrier
        ) as out:
            bridge.save_megatron_model(
                model,
                out,
                hf_tokenizer_path=hf_path if source.has_tokenizer else None,
                low_memory_save=True,  # frees each weight once staged: the 671B model is not held twice
            )
    if ranks.is_writer:
        print(f"imported {hf_path} -> {megatron_path} (TP={tp} PP={pp} EP={ep})", flush=True)


def export_hf(
    megatron_path: str, hf_path: str, hf_reference: str, tp: int = 1, pp: int = 1, ep: int = 1
) -> None:
    """Megatron-Bridge checkpoint -> HF safetensors dir (BF16) with config, tokenizer and index, sharded
    like ``hf_reference`` (the HF checkpoint the model was imported from, or one of its architecture)."""
    code_check.check()
    parallel = Parallelism(tp, pp, ep)
    checks.check_megatron_checkpoint(megatron_path, "--megatron-path")
    reference = checks.check_hf_checkpoint(hf_reference, "--hf-reference")
    checks.check_parallelism(reference.config, parallel)
    checks.check_output_dir(hf_path, "--hf-path")

    from conversion.distributed import model_parallel
    from conversion.hf_export import save_hf
    from conversion.models import bridge_for, check_same_architecture, model_from_megatron, mtp_layers
    from conversion.staging import staged_directory

    bridge = bridge_for(hf_reference)
    with model_parallel(parallel) as ranks:
        model = model_from_megatron(bridge, megatron_path, parallel)
        check_same_architecture(bridge, model, "--hf-reference")
        with staged_directory(hf_path, "--hf-path", is_writer=ranks.is_writer, barrier=ranks.barrier) as out:
            save_hf(bridge, model, out, reference, with_mtp=mtp_layers(model) > 0, ranks=ranks)
    if ranks.is_writer:
        print(f"exported {megatron_path} -> {hf_path}", flush=True)


def verify(
    hf_path: str,
    megatron_path: str,
    tp: int = 1,
    pp: int = 1,
    ep: int = 1,
    batch_size: int = 2,
    seq_length: int = 64,
    seed: int = 0,
    max_mean_rel_error: float = 0.01,
    min_top1_agreement: float = 0.95,
    report_path: Optional[str] = None,
) -> Optional[dict]:
    """Run the same random tokens through the Megatron checkpoint (at TP/PP/EP) and the HF checkpoint
    (transformers, on rank 0's GPU: for models whose HF copy fits there) and compare the logits.

    Passes on the mean error (relative to max |HF logit|) and the top-1 agreement: in BF16 a token
    whose router scores nearly tie can pick another expert in either model, which moves that one
    position's logits a lot (the max error reports it) without meaning the conversion is wrong."""
    code_check.check()
    parallel = Parallelism(tp, pp, ep)
    checks.check_megatron_checkpoint(megatron_path, "--megatron-path")
    source = checks.check_hf_checkpoint(hf_path, "--hf-path")
    checks.check_parallelism(source.config, parallel)
    if seq_length % tp:
        raise RecipeError("--seq-length", f"must be a multiple of TP={tp} (sequence parallelism)")

    import torch

    from conversion.distributed import model_parallel
    from conversion.logits import LogitComparison, hf_logits, megatron_logits
    from conversion.models import bridge_for, model_from_megatron

    vocab_size = source.config["vocab_size"]
    tokens = torch.randint(
        vocab_size, (batch_size, seq_length), generator=torch.Generator().manual_seed(seed)
    )
    bridge = bridge_for(hf_path)
    with model_parallel(parallel) as ranks:
        model = model_from_megatron(bridge, megatron_path, parallel)
        megatron = megatron_logits(model, tokens, vocab_size, ranks).cpu()
        del model
        if not ranks.is_writer:
            return None
        comparison = LogitComparison.of(megatron, hf_logits(hf_path, tokens).cpu())
    report = {
        "hf_path": hf_path,
        "megatron_path": megatron_path,
        "parallel": {"tp": tp, "pp": pp, "ep": ep},
        "tokens": {"batch_size": batch_size, "seq_length": seq_length, "seed": seed},
        "bounds": {"max_mean_rel_error": max_mean_rel_error, "min_top1_agreement": min_top1_agreement},
        **comparison.to_dict(),
        "passed": comparison.mean_rel_error <= max_mean_rel_error
        and comparison.top1_agreement >= min_top1_agreement,
    }
    print(json.dumps(report, indent=2), flush=True)
    if report_path:
        Path(report_path).write_text(json.dumps(report, indent=2) + "\n")
    if not report["passed"]:
        raise VerifyFailed(
            f"verify failed: mean_rel_error {comparison.mean_rel_error:.3g} (bound {max_mean_rel_error}), "
            f"top1_agreement {comparison.top1_agreement:.3f} (bound {min_top1_agreement})"
        )
    return report


def generate(
    hf_path: str,
    megatron_path: str,
    prompt: str = "The capital of France is",
    max_new_tokens: int = 16,
    tp: int = 1,
    pp: int = 1,
    ep: int = 1,
) -> list[int]:
    """Greedy generation from a Megatron checkpoint (tokenizer from ``hf_path``); prints the text and
    returns the generated token ids on every rank."""
    code_check.check()
    parallel = Parallelism(tp, pp, ep)
    checks.check_megatron_checkpoint(megatron_path, "--megatron-path")
    source = checks.check_hf_checkpoint(hf_path, "--hf-path")
    checks.check_parallelism(source.config, parallel)
    if not source.has_tokenizer:
        raise RecipeError("--hf-path", f"{hf_path} has no tokenizer to encode the prompt with")

    import torch
    from transformers import AutoTokenizer

    from conversion.distributed import model_parallel
    from conversion.logits import megatron_logits
    from conversion.models import bridge_for, model_from_megatron

    tokenizer = AutoTokenizer.from_pretrained(hf_path)
    tokens = torch.tensor([tokenizer.encode(prompt)])
    generated: list[int] = []
    bridge = bridge_for(hf_path)
    with model_parallel(parallel) as ranks:
        model = model_from_megatron(bridge, megatron_path, parallel)
        for _ in range(max_new_tokens):
            # recompute the whole sequence (no KV cache): a check, not a server; pad to a multiple of TP
            padded = torch.nn.functional.pad(tokens, (0, -tokens.size(1) % tp), value=tokens[0, -1].item())
            logits = megatron_logits(model, padded, source.config["vocab_size"], ranks)
            next_token = int(logits[0, tokens.size(1) - 1].argmax())
            generated.append(next_token)
            tokens = torch.cat([tokens, torch.tensor([[next_token]])], dim=1)
            if next_token == tokenizer.eos_token_id:
                break
    if ranks.is_writer:
        print(f"prompt: {prompt!r}\ngenerated: {tokenizer.decode(generated)!r}", flush=True)
    return generated
