"""Which tensors hold the GPU memory after an optimizer step: the measured side of the planner check.

Counts each CUDA storage once (parameters are views into Megatron's contiguous buffers), so the
parts add up to at most ``torch.cuda.memory_allocated()``; the rest is reported as ``other``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from dsv3_recipes.plan.memory import GIB


def _storage(t: torch.Tensor) -> tuple[int, int]:
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


def _inner_optimizers(optimizer: object) -> Iterator[torch.optim.Optimizer]:
    """The torch/TE optimizers inside Megatron's (possibly chained) optimizer wrappers."""
    for o in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(o, "optimizer", None)
        if isinstance(inner, torch.optim.Optimizer):
            yield inner


def _tensors(model: Iterable[torch.nn.Module], optimizer: object) -> Iterator[tuple[str, torch.Tensor]]:
    for chunk in model:
        for p in chunk.parameters():
            yield "weights", p
            for attr in ("main_grad", "grad"):
                g = getattr(p, attr, None)
                if isinstance(g, torch.Tensor):
                    yield "grads", g
    for inner in _inner_optimizers(optimizer):
        for state in inner.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.is_cuda:
                    yield f"optimizer {key}", value


def census_gib(model: Iterable[torch.nn.Module], optimizer: object) -> dict[str, float]:
    """GiB per category (first category to claim a storage wins), plus ``other`` and ``allocated``."""
    seen: set[int] = set()
    parts: dict[str, float] = {}
    for category, tensor in _tensors(model, optimizer):
        if not tensor.is_cuda:
            continue
        ptr, nbytes = _storage(tensor)
        if ptr in seen or nbytes == 0:
            continue
        seen.add(ptr)
        parts[category] = parts.get(category, 0.0) + nbytes / GIB
    allocated = torch.cuda.memory_allocated() / GIB
    parts["other"] = allocated - sum(parts.values())
    parts["allocated"] = allocated
    return parts
