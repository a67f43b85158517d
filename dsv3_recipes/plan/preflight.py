"""Preflight: refuse an impossible recipe before submission, and say what a possible one will cost.

``plan(recipe)`` runs ``validate.validate`` (types, ranges, schedule, precision and recompute against
the GPU and Megatron-Core, the pipeline layout, every parallel divisibility, the MLPerf rules) and
checks that the most loaded rank fits in GPU memory; it then reports parameters, per-rank memory,
FLOPs per token and the step time by part (``plan.step_time``: measured per-layer costs, communication,
pipeline, optimizer, host). ``check_launch(recipe)`` adds what a launch needs wherever it runs: data,
the MLPerf data, tokenizer and checkpoints, a resumable checkpoint, no secrets in the environment.
Everything raises ``RecipeError`` naming the field.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Optional

from dsv3_recipes.mlperf import rules as mlperf_rules
from dsv3_recipes.plan import flops, memory, step_time
from dsv3_recipes.plan.validate import validate
from dsv3_recipes.recipe import checkpoints, rules
from dsv3_recipes.recipe.hardware import Gpu
from dsv3_recipes.recipe.layout import Stage
from dsv3_recipes.recipe.parallel import ParallelSizes
from dsv3_recipes.recipe.rules import Capabilities
from dsv3_recipes.recipe.schema import Recipe, RecipeError


@dataclass(frozen=True)
class Plan:
    """What a recipe will need and do, for the most loaded rank and the whole step."""

    recipe_name: str
    gpu: Gpu
    sizes: ParallelSizes
    stages: list[Stage]
    parameters: flops.ParameterCounts
    ranks: list[memory.RankMemory]
    flops_per_token: float
    tokens_per_step: int
    step: Optional[step_time.StepTime]  # None where no calibration can price it (the reason is below)
    step_unpriced: str
    fp8: bool
    memory_not_counted: tuple[str, ...]  # what the GiB above leave out (memory.not_counted)

    @property
    def memory(self) -> memory.RankMemory:
        return memory.most_loaded(self.ranks)

    @property
    def peak_tflops(self) -> float:
        """Dense peak the MFU refers to: FP8 with an FP8 recipe, else BF16 (as metrics.py does)."""
        return self.gpu.peak_fp8_tflops if self.fp8 else self.gpu.peak_bf16_tflops

    @property
    def step_time_s(self) -> Optional[float]:
        return self.step.step_time_s if self.step else None

    @property
    def tokens_per_s_per_gpu(self) -> Optional[float]:
        return self.tokens_per_step / self.step_time_s / self.sizes.world if self.step else None

    @property
    def mfu(self) -> Optional[float]:
        """The model-FLOPs utilisation the predicted step time implies (of the dense peak)."""
        if not self.step:
            return None
        return (
            self.tokens_per_step
            * self.flops_per_token
            / (self.step_time_s * self.sizes.world * self.peak_tflops * 1e12)
        )

    def to_dict(self) -> dict:
        """JSON-able summary (`dsv3 plan --json`)."""
        s, mem = self.sizes, self.memory
        return {
            "recipe": self.recipe_name,
            "gpu": {"type": self.gpu.name, "count": s.world, "memory_gib": self.gpu.memory_gib},
            "parallel": {
                "world": s.world,
                "tp": s.tp,
                "pp": s.pp,
                "vpp": s.vpp,
                "cp": s.cp,
                "dp": s.dp,
                "ep": s.ep,
                "etp": s.etp,
                "expert_dp": s.expert_dp,
                "sequence_parallel": s.sequence_parallel,
                "num_microbatches": s.num_microbatches,
            },
            "stages": [
                {"index": st.index, "pp_rank": st.pp_rank, "vp_rank": st.vp_rank, "layers": list(st.layers)}
                for st in self.stages
            ],
            "parameters": {
                "total": self.parameters.total,
                "main_model": self.parameters.main_model,
                "mtp": self.parameters.mtp,
                "routed_experts": self.parameters.routed_experts,
                "active_per_token": self.parameters.active_per_token,
                "most_loaded_rank_dense": mem.weights.dense,
                "most_loaded_rank_expert": mem.weights.expert,
            },
            "memory": {
                "pp_rank": mem.pp_rank,
                "terms_gib": {t.name: t.gib for t in mem.terms},
                "allocated_gib": mem.allocated_bytes / memory.GIB,
                "total_gib": mem.total_bytes / memory.GIB,
                "gpu_memory_gib": self.gpu.memory_gib,
                "per_rank_total_gib": [r.total_bytes / memory.GIB for r in self.ranks],
                "not_counted": list(self.memory_not_counted),
            },
            "flops_per_token": self.flops_per_token,
            "tokens_per_step": self.tokens_per_step,
            "peak_tflops": self.peak_tflops,
            "step_time_s": self.step_time_s,
            "tokens_per_s_per_gpu": self.tokens_per_s_per_gpu,
            "step_time_parts": dict(self.step.parts) if self.step else None,
            "mfu": self.mfu,
            "step_time_source": (
                {
                    "case": self.step.case,
                    "calibration": self.step.calibration,
                    "slowest_pp_rank": self.step.slowest_pp_rank,
                }
                if self.step
                else {"unpriced": self.step_unpriced}
            ),
        }

    def render(self) -> str:
        """A readable report: layout, stages, parameters, memory of the most loaded rank, throughput."""
        from rich.console import Console
        from rich.table import Table

        s, mem, p = self.sizes, self.memory, self.parameters
        out = io.StringIO()
        console = Console(file=out, width=110, force_terminal=False, color_system=None)
        console.print(
            f"Plan for {self.recipe_name}: {s.world} x {self.gpu.name} ({self.gpu.memory_gib:.1f} GiB)"
        )
        console.print(f"Parallel: {s.describe()} | {s.num_microbatches} micro-batches per step")

        stages = Table(title="Pipeline stages")
        stages.add_column("PP rank")
        for v in range(s.vpp):
            stages.add_column(f"VPP {v}" if s.vpp > 1 else "layers")
        stages.add_column("total GiB", justify="right")
        for r, rank in enumerate(self.ranks):
            row = [st.describe() for st in sorted(self.stages, key=lambda x: x.vp_rank) if st.pp_rank == r]
            stages.add_row(str(r), *row, f"{rank.total_bytes / memory.GIB:.1f}")
        console.print(stages)

        console.print(
            f"Parameters: {p.total / 1e9:.2f}B total = {p.main_model / 1e9:.2f}B model"
            f" + {p.mtp / 1e9:.2f}B MTP; "
            f"{p.routed_experts / 1e9:.2f}B routed experts; {p.active_per_token / 1e9:.2f}B active per token"
        )
        terms = Table(title=f"Memory of the most loaded rank (PP rank {mem.pp_rank})")
        terms.add_column("term")
        terms.add_column("GiB", justify="right")
        terms.add_column("detail")
        for t in mem.terms:
            terms.add_row(t.name, f"{t.gib:.2f}", t.detail)
        terms.add_row(
            "allocated peak", f"{mem.allocated_bytes / memory.GIB:.2f}", "what max_memory_allocated reports"
        )
        terms.add_row("total", f"{mem.total_bytes / memory.GIB:.2f}", f"of {self.gpu.memory_gib:.1f} GiB")
        console.print(terms)
        for what in self.memory_not_counted:
            console.print(f"Not counted: {what}")
        console.print(
            f"Compute: {self.flops_per_token / 1e9:.1f} GFLOP/token x {self.tokens_per_step:,} tokens/step"
        )
        if not self.step:
            console.print(f"Step time: not predicted ({self.step_unpriced})")
            return out.getvalue()
        parts = Table(title=f"Step time by part (slowest pipeline rank: {self.step.slowest_pp_rank})")
        parts.add_column("part")
        parts.add_column("s", justify="right")
        parts.add_column("share", justify="right")
        for name, seconds in self.step.parts.items():
            parts.add_row(name, f"{seconds:.3f}", f"{seconds / self.step_time_s:.1%}")
        parts.add_row("step", f"{self.step_time_s:.3f}", "")
        console.print(parts)
        precision = "FP8" if self.fp8 else "BF16"
        console.print(
            f"{self.step_time_s:.2f} s/step, {self.tokens_per_s_per_gpu:,.0f} tokens/s/GPU, MFU "
            f"{self.mfu:.1%} of {self.peak_tflops:.0f} {precision} TFLOPS/GPU\n"
            f"Layer costs: {self.step.case}; {self.step.calibration}"
        )
        return out.getvalue()


def memory_lever(rank: memory.RankMemory) -> str:
    """The field whose change shrinks the dominant memory term of a rank that does not fit."""
    states = sum(t.bytes for t in rank.states)
    if rank.activations.bytes + rank.working_set.bytes >= states:
        return "train.micro_batch_size"
    if rank.weights.expert >= rank.weights.dense:
        return "model.expert_model_parallel_size"
    return "model.pipeline_model_parallel_size"


def check_fits(rank: memory.RankMemory, gpu: Gpu) -> None:
    needed = rank.total_bytes / memory.GIB
    if needed <= gpu.memory_gib:
        return
    largest = sorted(rank.terms, key=lambda t: t.bytes, reverse=True)[:3]
    terms = ", ".join(f"{t.name} {t.gib:.1f}" for t in largest)
    raise RecipeError(
        memory_lever(rank),
        f"PP rank {rank.pp_rank} needs {needed:.1f} GiB but a {gpu.name} has {gpu.memory_gib:.1f} GiB "
        f"(largest: {terms} GiB); lower micro_batch_size, add recompute, or raise EP/PP",
    )


def plan(recipe: Recipe) -> Plan:
    """Check a built recipe and estimate its memory and speed; raises RecipeError on bad input."""
    resolved = validate(recipe)
    stages = list(resolved.stages)
    ranks = memory.all_ranks(recipe, resolved.sizes, stages)
    check_fits(memory.most_loaded(ranks), resolved.gpu)
    step, unpriced = None, ""
    try:
        step = step_time.step_time(resolved)
    except RecipeError as err:  # a shape the calibration cannot price: the plan says so, and still stands
        unpriced = str(err)
    return Plan(
        recipe_name=recipe.name,
        gpu=resolved.gpu,
        sizes=resolved.sizes,
        stages=stages,
        parameters=flops.parameter_counts(recipe.model),
        ranks=ranks,
        flops_per_token=flops.model_flops_per_token(recipe.model),
        tokens_per_step=recipe.tokens_per_step,
        step=step,
        step_unpriced=unpriced,
        fp8=resolved.fp8_recipe is not None,
        memory_not_counted=memory.not_counted(recipe),
    )


def check_launch(recipe: Recipe, overwrite: bool = False) -> Plan:
    """``plan`` plus what any launch of the recipe needs, on whichever executor it runs; ``overwrite``
    (``--overwrite``) lets it save over another run's checkpoint."""
    report = plan(recipe)
    d = recipe.dataset
    rules.DATA_OR_MOCK.check(recipe)
    tok = recipe.tokenizer
    if tok.tokenizer_type == "HuggingFaceTokenizer" and not d.mock and not tok.tokenizer_model:
        raise RecipeError(
            "tokenizer.tokenizer_model",
            "None: indexed data needs the HuggingFaceTokenizer that made it (a hub name or a directory)",
        )
    rules.WANDB_KEY.check(recipe, Capabilities.here())
    if recipe.mlperf.enabled:
        mlperf_rules.check_files(recipe)
    checkpoints.check_resume(recipe)
    checkpoints.check_save(recipe, overwrite)
    return report
