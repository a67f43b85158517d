"""Profiler ranges named after the model's parts, so a kernel profile can tell the GEMMs apart.

cuBLAS runs an expert's, the shared expert's and an attention projection's GEMM under the same kernel
names, and Transformer Engine's GEMMs are not ATen ops, so a trace alone cannot say which is which.
While the PyTorch profiler records, forward hooks open a ``record_function`` range ``dsv3::<part>``
around each part; report/kernel_profile.py reads them, and gives a backward kernel the part of the
forward op that made its autograd node. When the profiler is off the hooks only test a flag.
"""

from __future__ import annotations

import torch
from megatron.bridge.training.callbacks import Callback, CallbackContext

# Part -> Megatron-Core 0.19 classes, most specific first (SharedExpertMLP is an MLP).
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("experts", ("TEGroupedMLP", "GroupedMLP", "SequentialMLP")),
    ("shared_expert", ("SharedExpertMLP",)),
    ("router", ("TopKRouter",)),
    ("moe", ("MoELayer",)),  # what the layer does around its router and experts: dispatch, combine
    ("dense_mlp", ("MLP",)),
    ("attention", ("MultiLatentAttention", "SelfAttention")),
    ("embedding", ("LanguageModelEmbedding",)),
    ("decoder", ("TransformerBlock",)),
    ("mtp", ("MultiTokenPredictionBlock",)),
    ("model", ("GPTModel",)),  # what GPTModel does itself, outside its blocks: the loss
)
OUTPUT_LAYER = "output_layer"  # GPTModel's attribute; a plain ColumnParallelLinear, named by its place


def part_of(name: str, module: torch.nn.Module) -> str | None:
    """The part a module stands for, by its place (the output layer) or its class and base classes."""
    if name.split(".")[-1] == OUTPUT_LAYER:
        return OUTPUT_LAYER
    classes = {cls.__name__ for cls in type(module).__mro__}
    return next((part for part, names in PARTS if classes.intersection(names)), None)


class ProfileRanges:
    """Forward pre/post hooks that open and close ``dsv3::<part>`` ranges while the profiler records."""

    def __init__(self, modules: list[tuple[str, torch.nn.Module]]):
        self.parts: dict[str, int] = {}
        for name, module in modules:
            part = part_of(name, module)
            if part is not None:
                open_ranges: list[torch.autograd.profiler.record_function | None] = []
                module.register_forward_pre_hook(self._enter(f"dsv3::{part}", open_ranges))
                module.register_forward_hook(self._exit(open_ranges))
                self.parts[part] = self.parts.get(part, 0) + 1

    @classmethod
    def of_model(cls, model: list[torch.nn.Module]) -> ProfileRanges:
        return cls([(name, m) for chunk in model for name, m in chunk.named_modules()])

    @staticmethod
    def _enter(label: str, open_ranges: list):
        def enter(_module, _args) -> None:
            if torch.autograd.profiler._is_profiler_enabled:
                section = torch.autograd.profiler.record_function(label)
                section.__enter__()
                open_ranges.append(section)
            else:
                open_ranges.append(None)

        return enter

    @staticmethod
    def _exit(open_ranges: list):
        def exit_(_module, _args, _output) -> None:
            section = open_ranges.pop() if open_ranges else None
            if section is not None:
                section.__exit__(None, None, None)

        return exit_


class ProfileRangesCallback(Callback):
    """Puts the ranges on the model when training starts (the model exists by then)."""

    def on_train_start(self, context: CallbackContext) -> None:
        ranges = ProfileRanges.of_model(context.model)
        print(f"dsv3: profiler ranges on {ranges.parts}", flush=True)
