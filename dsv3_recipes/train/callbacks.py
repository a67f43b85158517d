"""Megatron-Bridge callbacks: per-step throughput, memory and loss lines, and a closing summary.

Megatron's own log line for the same step carries its TFLOPS figure and the MTP loss; `dsv3 report`
joins the two by iteration."""

from __future__ import annotations

import json
import os
import time

import torch
from megatron.bridge.training.callbacks import Callback, CallbackContext

from dsv3_recipes import hardware
from dsv3_recipes.flops import model_flops_per_token
from dsv3_recipes.memory import GIB
from dsv3_recipes.metrics import SUMMARY_TAG, StepMetrics, step_metrics, summarize
from dsv3_recipes.recipe import Recipe
from dsv3_recipes.train.memory_census import census_gib

WARMUP_STEPS = 3


class ThroughputCallback(Callback):
    """Times each optimizer step and prints one metrics line from ``logger.log_rank`` (default: the last
    rank); validate.check_log_rank keeps it on the last pipeline stage, which holds the loss."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.flops_per_token = model_flops_per_token(recipe.model)
        self.tokens_per_step = recipe.train.global_batch_size * recipe.model.seq_length
        self.history: list[StepMetrics] = []
        self._start = 0.0
        self._static_mem_gib = 0.0
        self._census: dict[str, float] = {}

    def on_train_start(self, context: CallbackContext) -> None:
        # Weights and buffers before step 1 (optimizer state is created lazily by the first step).
        self._static_mem_gib = torch.cuda.memory_allocated() / GIB

    def _is_reporting_rank(self) -> bool:
        chosen = self.recipe.logger.log_rank
        last = torch.distributed.get_world_size() - 1
        return torch.distributed.get_rank() == (last if chosen is None else chosen)

    def on_train_step_start(self, context: CallbackContext) -> None:
        torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_train_step_end(self, context: CallbackContext) -> None:
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - self._start
        if not self._is_reporting_rank():
            return
        if not self._census and context.optimizer is not None:
            # After the first step every model-state tensor exists and no activation is alive.
            self._census = census_gib(context.model, context.optimizer)
        loss = (context.loss_dict or {}).get("lm loss")
        metrics = step_metrics(
            step=context.state.train_state.step + 1,  # Bridge counts the step after this hook
            lm_loss=float(loss) if loss is not None else None,
            step_time_s=elapsed,
            tokens_per_step=self.tokens_per_step,
            flops_per_token=self.flops_per_token,
            world_size=torch.distributed.get_world_size(),
            gpu=hardware.detect(torch.cuda.get_device_name()),
            mem_allocated_bytes=torch.cuda.max_memory_allocated(),
            mem_reserved_bytes=torch.cuda.max_memory_reserved(),
            fp8=self.recipe.mixed_precision.fp8_recipe is not None,
        )
        self.history.append(metrics)
        print(metrics.to_line(), flush=True)

    def on_train_end(self, context: CallbackContext) -> None:
        if not self._is_reporting_rank() or not self.history:
            return
        summary = {
            "recipe": self.recipe.name,
            "gpu": torch.cuda.get_device_name(),
            "num_gpus": torch.distributed.get_world_size(),
            "static_mem_allocated_gib": self._static_mem_gib,
            "memory_after_step1_gib": self._census,
            **summarize(self.history, WARMUP_STEPS),
        }
        print(f"{SUMMARY_TAG} {json.dumps(summary)}", flush=True)
        os.makedirs(self.recipe.output_dir, exist_ok=True)
        with open(os.path.join(self.recipe.output_dir, "metrics.jsonl"), "w") as f:
            for m in self.history:
                f.write(m.to_line().split(" ", 1)[1] + "\n")


def callbacks_for(recipe: Recipe) -> list[Callback]:
    """Callbacks every run gets, plus the MLPerf logger in MLPerf mode."""
    callbacks: list[Callback] = [ThroughputCallback(recipe)]
    if recipe.mlperf.enabled:
        from dsv3_recipes.train.mlperf_log import MLPerfCallback, drop_page_cache

        callbacks.append(MLPerfCallback(recipe, cache_cleared=drop_page_cache()))
    return callbacks
