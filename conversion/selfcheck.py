"""End-to-end conversion check on a tiny DeepSeek-V3 made on the spot (no network): HF -> Megatron,
logits against transformers, greedy generation (and transformers' for comparison), Megatron -> HF,
bit-exact comparison with the source. The GPU test asserts on it; benchmarks/run_conversion_verify.py
records it. Under torchrun every rank calls ``run``; rank 0 makes the checkpoint and gets the result.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from conversion import tasks
from conversion.checks import INDEX_FILE, Parallelism, check_output_dir
from conversion.distributed import init_process_group
from conversion.tiny import make_tiny_checkpoint


def hf_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of an HF safetensors directory, through its index."""
    root = Path(path)
    weight_map = json.loads((root / INDEX_FILE).read_text())["weight_map"]
    weights: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        weights |= load_file(root / shard)
    return weights


def mismatched_tensors(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> list[str]:
    """Names missing on either side, or with another dtype, shape or any other bit."""
    names = sorted(expected.keys() | actual.keys())
    return [
        name
        for name in names
        if name not in expected
        or name not in actual
        or expected[name].dtype != actual[name].dtype
        or expected[name].shape != actual[name].shape
        or not torch.equal(expected[name].view(torch.uint8), actual[name].view(torch.uint8))
    ]


def hf_greedy(hf_path: str | Path, prompt: str, max_new_tokens: int) -> list[int]:
    """transformers' greedy continuation, for comparison with the Megatron one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(hf_path)
    model = AutoModelForCausalLM.from_pretrained(hf_path, dtype=torch.bfloat16).to(device).eval()
    prompt_ids = torch.tensor([tokenizer.encode(prompt)], device=device)
    with torch.no_grad():
        out = model.generate(prompt_ids, max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, prompt_ids.size(1) :].tolist()


@dataclass
class SelfCheck:
    parallel: dict
    import_s: float
    verify: dict
    prompt: str
    generated: list[int]
    hf_generated: list[int]
    export_s: float
    tensors: int
    mismatched: list[str]

    @property
    def passed(self) -> bool:
        return bool(self.verify["passed"]) and not self.mismatched

    def to_dict(self) -> dict:
        return asdict(self) | {"passed": self.passed}


def run(
    workdir: str | Path,
    parallel: Parallelism,
    prompt: str = "Hello, DeepSeek",
    max_new_tokens: int = 8,
    **tiny_config,
) -> Optional[SelfCheck]:
    """Collective; returns the result on rank 0 (None elsewhere). ``workdir`` must be empty or absent;
    ``tiny_config`` overrides the tiny model's config (e.g. ``num_hidden_layers=4`` for PP=2)."""
    created = not dist.is_initialized()
    if created:
        init_process_group()
    try:
        return _run(Path(workdir), parallel, prompt, max_new_tokens, tiny_config)
    finally:
        if created:
            dist.destroy_process_group()


def _run(
    work: Path, parallel: Parallelism, prompt: str, max_new_tokens: int, tiny_config: dict
) -> Optional[SelfCheck]:
    hf, megatron, exported = work / "hf", work / "megatron", work / "exported"
    report_path = work / "verify.json"
    layout = {"tp": parallel.tp, "pp": parallel.pp, "ep": parallel.ep}
    is_writer = dist.get_rank() == 0
    if is_writer:
        check_output_dir(work, "workdir")
        make_tiny_checkpoint(hf, **tiny_config)
    dist.barrier()
    start = time.perf_counter()
    tasks.import_hf(str(hf), str(megatron), **layout)
    import_s = time.perf_counter() - start
    with contextlib.suppress(tasks.VerifyFailed):  # recorded all the same, ``passed`` false
        tasks.verify(str(hf), str(megatron), **layout, report_path=str(report_path))
    generated = tasks.generate(str(hf), str(megatron), prompt, max_new_tokens, **layout)
    start = time.perf_counter()
    tasks.export_hf(str(megatron), str(exported), str(hf), **layout)
    export_s = time.perf_counter() - start
    if not is_writer:
        return None
    source = hf_weights(hf)
    return SelfCheck(
        parallel=layout,
        import_s=round(import_s, 2),
        verify=json.loads(report_path.read_text()),
        prompt=prompt,
        generated=generated,
        hf_generated=hf_greedy(hf, prompt, len(generated)),
        export_s=round(export_s, 2),
        tensors=len(source),
        mismatched=mismatched_tensors(source, hf_weights(exported)),
    )
