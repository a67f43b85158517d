"""Logits of a Megatron model over its PP/TP layout and of the HF model, and how far apart they are
(train side)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.pipeline_parallel.schedules import get_forward_backward_func

from conversion.distributed import Ranks, on_gpu


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if on_gpu() else torch.device("cpu")


def megatron_logits(model: list, tokens: torch.Tensor, vocab_size: int, ranks: Ranks) -> torch.Tensor:
    """Collective: float32 logits [batch, seq, vocab] of ``tokens`` (the same on every rank), returned
    on every rank. The last pipeline stage gathers the TP vocabulary shards; the last rank broadcasts."""
    tokens = tokens.to(_device())
    positions = torch.arange(tokens.size(1), device=tokens.device).unsqueeze(0).expand_as(tokens)
    with torch.no_grad():
        if parallel_state.get_pipeline_model_parallel_world_size() == 1:
            shard = model[0](input_ids=tokens, position_ids=positions, attention_mask=None)
        else:
            shard = _pipelined_forward(model, tokens, positions)
    logits = torch.empty(*tokens.shape, vocab_size, dtype=torch.float32, device=tokens.device)
    if parallel_state.is_pipeline_last_stage():
        group = parallel_state.get_tensor_model_parallel_group()
        shards = [torch.empty_like(shard) for _ in range(dist.get_world_size(group))]
        dist.all_gather(shards, shard.contiguous(), group=group)
        logits.copy_(torch.cat(shards, dim=-1)[..., :vocab_size].float())  # drop Megatron's vocab padding
    dist.broadcast(logits, src=ranks.last)
    return logits


def _pipelined_forward(model: list, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor | None:
    """Megatron's forward-only schedule across the pipeline stages (it allocates on CUDA): the last
    stage's output, None on the others."""

    def forward_step(data_iterator, chunk):
        output = chunk(input_ids=next(data_iterator), position_ids=positions, attention_mask=None)
        return output, lambda out, **_: out

    outputs = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter([tokens]),
        model=model,
        num_microbatches=1,
        seq_length=tokens.size(1),
        micro_batch_size=tokens.size(0),
        forward_only=True,
        collect_non_loss_data=True,
    )
    return outputs[0] if outputs else None


def hf_logits(hf_path: str, tokens: torch.Tensor) -> torch.Tensor:
    """The transformers DeepseekV3ForCausalLM reference, BF16, on this rank's device."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_path, dtype=torch.bfloat16).to(_device()).eval()
    with torch.no_grad():
        logits = model(input_ids=tokens.to(_device())).logits.float()
    del model
    return logits


@dataclass(frozen=True)
class LogitComparison:
    """Megatron vs HF logits over the same tokens: relative errors are normalised by max |HF logit|."""

    max_abs_error: float
    mean_abs_error: float
    max_rel_error: float
    mean_rel_error: float
    top1_agreement: float
    positions: int

    @classmethod
    def of(cls, megatron: torch.Tensor, hf: torch.Tensor) -> LogitComparison:
        diff = (megatron.float() - hf.float()).abs()
        scale = hf.float().abs().max().clamp_min(torch.finfo(torch.float32).tiny)
        agree = megatron.argmax(-1) == hf.argmax(-1)
        return cls(
            max_abs_error=diff.max().item(),
            mean_abs_error=diff.mean().item(),
            max_rel_error=(diff.max() / scale).item(),
            mean_rel_error=(diff.mean() / scale).item(),
            top1_agreement=agree.float().mean().item(),
            positions=agree.numel(),
        )

    def to_dict(self) -> dict:
        return asdict(self)
