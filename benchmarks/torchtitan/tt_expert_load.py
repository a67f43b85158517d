"""TorchTitan plug-in: ``--experimental.custom_import tt_expert_load`` (the command line wins over the
job toml's ``tt_dsv3_proxy``, so this module imports that one: its flavor ``proxy_3b`` and log line).

Adds one line per optimizer step, ``TT_EXPERT_LOAD {json}``: tokens per expert over every MoE layer
(min, mean, max), the worst layer's max/mean, and the range of the layers' expert bias, the same
statistics as the project's ExpertLoad (dsv3_recipes/train/callbacks.py) for Megatron's routers.

The counts are TorchTitan's own (commit f1a96b34): each MoE layer adds its router's histogram of routed
tokens to ``moe.tokens_per_expert`` in the forward pass (models/moe/moe.py); an optimizer step pre-hook
(components/optimizer.py, ``build_optimizers_with_moe_load_balancing``) moves ``moe.expert_bias`` by
``load_balance_coeff * sign(mean - count)`` (mean-centred) and zeroes the counts. A global optimizer
pre-hook runs before any optimizer's own, so the one here reads the step's counts first; the bias it
reads is the one this step routed with (before the step's update). The numbers go to the host without
a wait (a non-blocking copy) and are printed at the next step, when the copy is long done: the GPU is
never stalled for them.
"""

from __future__ import annotations

import atexit
import json

import torch
import tt_dsv3_proxy  # noqa: F401  (registers flavor proxy_3b, the SDPA backends, the memory line)
from torch.optim.optimizer import register_optimizer_step_pre_hook

TAG = "TT_EXPERT_LOAD"


def load_summary(counts: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """[min, mean, max, worst layer's max/mean, bias min, bias max] of [layers, experts] counts (on the
    counts' device; layers that routed nothing are left out, as ExpertLoad leaves them out)."""
    counted = counts[counts.sum(dim=1) > 0].float()
    worst = (counted.max(dim=1).values / counted.mean(dim=1)).max()
    nan = torch.full((), float("nan"), device=counts.device)
    bias_range = (bias.min(), bias.max()) if bias is not None else (nan, nan)
    return torch.stack([counted.min(), counted.mean(), counted.max(), worst, *bias_range]).float()


def _recomputed(block: torch.nn.Module) -> bool:
    """TorchTitan's own test: a checkpoint-wrapped block counts its tokens twice (forward and recompute)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl

    return getattr(block, "checkpoint_impl", None) is CheckpointImpl.NO_REENTRANT


class ExpertLoadLog:
    """The global optimizer pre-hook and the lines it prints, one step late."""

    def __init__(self) -> None:
        self.step = 0
        self.pending: tuple[int, int, torch.Tensor, torch.cuda.Event | None] | None = None

    def __call__(self, optimizer: torch.optim.Optimizer, _args, _kwargs) -> None:
        model_parts = getattr(optimizer, "model_parts", None)  # TorchTitan's OptimizersContainer
        if model_parts is None:
            return  # one of the optimizers inside the container: the counts are read already
        self.step += 1
        counts, biases = [], []
        for part in model_parts:
            for block in part.layers.values():
                if not getattr(block, "moe_enabled", False):
                    continue
                tokens = block.moe.tokens_per_expert
                counts.append(tokens // 2 if _recomputed(block) else tokens)
                if block.moe.expert_bias is not None:
                    biases.append(block.moe.expert_bias)
        if not counts:
            return
        stats = load_summary(torch.vstack(counts), torch.vstack(biases) if biases else None)
        self.flush()
        on_gpu = stats.is_cuda
        event = torch.cuda.Event() if on_gpu else None
        host = stats.to("cpu", non_blocking=on_gpu)
        if event is not None:
            event.record()
        self.pending = (self.step, len(counts), host, event)

    def flush(self) -> None:
        if self.pending is None:
            return
        step, layers, host, event = self.pending
        self.pending = None
        if event is not None:
            event.synchronize()
        low, mean, high, worst, bias_min, bias_max = host.tolist()
        line = {
            "step": step,
            "routers": layers,
            "tokens_per_expert_min": low,
            "tokens_per_expert_mean": mean,
            "tokens_per_expert_max": high,
            "worst_router_max_over_mean": worst,
        }
        if bias_min == bias_min:  # not NaN: the layers have an expert bias
            line.update(expert_bias_min=bias_min, expert_bias_max=bias_max)
        print(f"{TAG} {json.dumps(line)}", flush=True)


LOG = ExpertLoadLog()
HOOK = register_optimizer_step_pre_hook(LOG)
atexit.register(LOG.flush)  # the last step's line
