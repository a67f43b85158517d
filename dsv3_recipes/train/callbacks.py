"""Megatron-Bridge callbacks: per-step throughput, memory and loss lines, and a closing summary.

Megatron's own log line for the same step carries its TFLOPS figure and the MTP loss; `dsv3 report`
joins the two by iteration. The summary also says how evenly the last step routed its tokens: the
throughput of an MoE model depends on it (Megatron's mock data routes very unevenly)."""

from __future__ import annotations

import gc
import json
import os
import time

import torch
from megatron.bridge.training.callbacks import Callback, CallbackContext

from dsv3_recipes.plan.flops import model_flops_per_token
from dsv3_recipes.plan.memory import GIB
from dsv3_recipes.recipe import hardware
from dsv3_recipes.recipe.schema import Recipe
from dsv3_recipes.report.metrics import (
    SUMMARY_TAG,
    StepMetrics,
    profiled_steps,
    step_metrics,
    summarize,
    warmup_steps,
)
from dsv3_recipes.train.memory_census import census_gib


class ExpertLoad:
    """Tokens each router sent to each expert during the current step (forward hooks on the routers).

    Counted only with grad enabled, as Megatron counts for its expert bias, so recomputed forwards are
    not counted twice. Under TE partial CUDA graphs the hook's in-place add is captured with the router
    into the graph and replays with it (the counts live in one persistent tensor).
    """

    def __init__(self, routers: list[torch.nn.Module], experts: int, device: str = "cuda"):
        self.routers = routers
        self.counts = torch.zeros(len(routers), experts, dtype=torch.float32, device=device)
        for i, router in enumerate(routers):
            router.register_forward_hook(self._hook(i))

    @classmethod
    def of_model(cls, model: list[torch.nn.Module], experts: int) -> ExpertLoad:
        from megatron.core.transformer.moe.router import TopKRouter

        return cls([m for chunk in model for m in chunk.modules() if isinstance(m, TopKRouter)], experts)

    def _hook(self, index: int):
        def count(_module, _inputs, output) -> None:
            if torch.is_grad_enabled():
                self.counts[index] += output[1].sum(dim=0)  # routing_map: [tokens, experts]

        return count

    def reset(self) -> None:
        self.counts.zero_()

    def summary(self) -> dict[str, float] | None:
        """Min/mean/max tokens per expert over every (router, expert), the worst router's max/mean, and
        the range of the routers' aux-loss-free expert bias (where they have one), over the routers that
        routed this step. Read in one copy to the host: a read per figure (and a boolean index) were 7 host
        syncs at every step's end, each with the GPU idle (call k's profile, benchmarks/README.md)."""
        counts = self.counts
        active = counts.sum(dim=1) > 0
        routers = active.sum()
        per_router_skew = counts.max(dim=1).values / counts.mean(dim=1)  # inf or nan where none routed
        figures = [
            routers.float(),
            torch.where(active[:, None], counts, torch.inf).min(),
            counts.sum() / (routers * counts.shape[1]).clamp(min=1),  # idle routers' rows are zeros
            counts.max(),
            torch.where(active, per_router_skew, -torch.inf).max(),
        ]
        biases = [b for b in (getattr(r, "expert_bias", None) for r in self.routers) if b is not None]
        if biases:
            stacked = torch.stack([b.detach().float() for b in biases]).to(counts.device)
            figures += [stacked.min(), stacked.max()]
        values = torch.stack(figures).tolist()
        if values[0] == 0:
            return None
        names = ["routers", "tokens_per_expert_min", "tokens_per_expert_mean", "tokens_per_expert_max"]
        names += ["worst_router_max_over_mean"] + (["expert_bias_min", "expert_bias_max"] if biases else [])
        summary = dict(zip(names, values, strict=True))
        summary["routers"] = int(summary["routers"])
        return summary


class ThroughputCallback(Callback):
    """Times each optimizer step and prints one metrics line from ``logger.log_rank`` (default: the last
    rank); validate.check_log_rank keeps it on the last pipeline stage, which holds the loss.

    A step's time runs from the end of the step before (the first: from its own start), so what Bridge
    does between steps -- the manual GC every ``train.manual_gc_interval`` steps, logging, saves --
    is counted, as Megatron's own "elapsed time per iteration" counts it."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.flops_per_token = model_flops_per_token(recipe.model)
        self.history: list[StepMetrics] = []
        self._last_end: float | None = None
        self._static_mem_gib = 0.0
        self._census: dict[str, float] = {}
        self._expert_load: ExpertLoad | None = None

    def on_train_start(self, context: CallbackContext) -> None:
        # Weights and buffers before step 1 (optimizer state is created lazily by the first step).
        self._static_mem_gib = torch.cuda.memory_allocated() / GIB
        if self._is_reporting_rank():
            self._expert_load = ExpertLoad.of_model(context.model, self.recipe.model.num_moe_experts)

    def _is_reporting_rank(self) -> bool:
        chosen = self.recipe.logger.log_rank
        last = torch.distributed.get_world_size() - 1
        return torch.distributed.get_rank() == (last if chosen is None else chosen)

    def on_train_step_start(self, context: CallbackContext) -> None:
        if self._expert_load is not None:
            self._expert_load.reset()  # at the end it holds the last step's routing
        if self._last_end is None:
            torch.cuda.synchronize()
            self._last_end = time.perf_counter()

    def on_train_step_end(self, context: CallbackContext) -> None:
        torch.cuda.synchronize()
        now = time.perf_counter()
        elapsed, self._last_end = now - self._last_end, now  # type: ignore[operator]
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
            tokens_per_step=self.recipe.tokens_per_step,
            flops_per_token=self.flops_per_token,
            world_size=torch.distributed.get_world_size(),
            gpu=hardware.detect(torch.cuda.get_device_name()),
            mem_allocated_bytes=torch.cuda.max_memory_allocated(),
            mem_reserved_bytes=torch.cuda.max_memory_reserved(),
            fp8=self.recipe.mixed_precision.fp8_recipe is not None,
        )
        # The load over the run, step by step (the GPU is synchronized above: the read costs no stall).
        metrics.expert_load = self._expert_load.summary() if self._expert_load else None
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
            "expert_load_last_step": self._expert_load.summary() if self._expert_load else None,
            **summarize(self.history, warmup_steps(self.recipe), profiled_steps(self.recipe)),
        }
        print(f"{SUMMARY_TAG} {json.dumps(summary)}", flush=True)
        os.makedirs(self.recipe.output_dir, exist_ok=True)
        with open(os.path.join(self.recipe.output_dir, "metrics.jsonl"), "w") as f:
            for m in self.history:
                f.write(m.to_line().split(" ", 1)[1] + "\n")


class GarbageCollection(Callback):
    """``train.gc_freeze`` and manual collections of ``train.manual_gc_generation`` below 2 (Bridge's own
    manual GC collects only generation 2). A collection runs after the step whose number is a multiple
    of ``train.manual_gc_interval``, where Bridge's would, so the next step's time counts it."""

    def __init__(self, recipe: Recipe):
        self.train = recipe.train

    def on_train_start(self, context: CallbackContext) -> None:
        if self.train.gc_freeze:  # after Bridge's set-up and its first gc.collect()
            gc.freeze()
            print(
                f"dsv3: gc.freeze(): {gc.get_freeze_count()} objects out of the collector's reach", flush=True
            )

    def on_train_step_end(self, context: CallbackContext) -> None:
        t = self.train
        step = context.state.train_state.step + 1  # Bridge counts the step after this hook
        if t.manual_gc_generation != 2 and t.manual_gc_interval and step % t.manual_gc_interval == 0:
            gc.collect(t.manual_gc_generation)


def callbacks_for(recipe: Recipe) -> list[Callback]:
    """Callbacks every run gets (throughput first: it times the step before anything else runs), the
    garbage collection Bridge lacks, the profiler's module ranges, and the MLPerf logger in MLPerf mode."""
    callbacks: list[Callback] = [ThroughputCallback(recipe)]
    t = recipe.train
    if t.gc_freeze or t.manual_gc_generation != 2:  # a generation below 2 needs train.manual_gc
        callbacks.append(GarbageCollection(recipe))
    if recipe.profiling.use_pytorch_profiler:
        from dsv3_recipes.train.profile_ranges import ProfileRangesCallback

        callbacks.append(ProfileRangesCallback())
    if recipe.mlperf.enabled:
        from dsv3_recipes.train.mlperf_log import MLPerfCallback, drop_page_cache

        callbacks.append(MLPerfCallback(recipe, cache_cleared=drop_page_cache()))
    return callbacks
