"""Preflight: refuse an impossible recipe before submission, and say what a possible one will cost.

``plan(recipe)`` checks field types, precision and recompute settings against the GPU and
Megatron-Core's rules, the pipeline layout, every parallel divisibility and that the most loaded
rank fits in GPU memory; it then reports parameters, per-rank memory, FLOPs per token and the step
time the recipe would have at a given MFU. Everything raises ``RecipeError`` naming the field.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from dsv3_recipes import flops, hardware, memory
from dsv3_recipes.hardware import Gpu
from dsv3_recipes.layout import Stage, pipeline_stages
from dsv3_recipes.parallel import ParallelSizes, parallel_sizes
from dsv3_recipes.recipe import Recipe, RecipeError, check_types

RECOMPUTE_MODULES = ("core_attn", "moe_act", "layernorm", "mla_up_proj", "mlp", "moe", "shared_experts")


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
    mfu: float
    fp8: bool

    @property
    def memory(self) -> memory.RankMemory:
        return memory.most_loaded(self.ranks)

    @property
    def peak_tflops(self) -> float:
        """Dense peak the MFU refers to: FP8 with an FP8 recipe, else BF16 (as metrics.py does)."""
        return self.gpu.peak_fp8_tflops if self.fp8 else self.gpu.peak_bf16_tflops

    @property
    def step_time_s(self) -> float:
        return (
            self.tokens_per_step
            * self.flops_per_token
            / (self.sizes.world * self.peak_tflops * 1e12 * self.mfu)
        )

    @property
    def tokens_per_s_per_gpu(self) -> float:
        return self.tokens_per_step / self.step_time_s / self.sizes.world

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
            },
            "flops_per_token": self.flops_per_token,
            "tokens_per_step": self.tokens_per_step,
            "mfu": self.mfu,
            "peak_tflops": self.peak_tflops,
            "step_time_s": self.step_time_s,
            "tokens_per_s_per_gpu": self.tokens_per_s_per_gpu,
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
        precision = "FP8" if self.fp8 else "BF16"
        console.print(
            f"Compute: {self.flops_per_token / 1e9:.1f} GFLOP/token x {self.tokens_per_step:,} tokens/step\n"
            f"At MFU {self.mfu:.0%} of {self.peak_tflops:.0f} {precision} TFLOPS/GPU: "
            f"{self.step_time_s:.2f} s/step, {self.tokens_per_s_per_gpu:,.0f} tokens/s/GPU"
        )
        return out.getvalue()


def check_precision(recipe: Recipe, gpu: Gpu) -> None:
    """FP8 recipe against the GPU generation, and the optimizer dtypes Megatron accepts."""
    mp, o, m = recipe.mixed_precision, recipe.optimizer, recipe.model
    supported = "'tensorwise', 'delayed', 'blockwise'" + (", 'mxfp8'" if gpu.supports_mxfp8 else "")
    if mp.fp8_recipe == "mxfp8" and not gpu.supports_mxfp8:
        raise RecipeError(
            "mixed_precision.fp8_recipe",
            f"mxfp8 needs Blackwell tensor cores (b200, gb200, gb300); {gpu.name} supports {supported}",
        )
    if mp.fp8_recipe and not mp.bf16:
        raise RecipeError(
            "mixed_precision.fp8_recipe", "FP8 recipes run on top of bf16: set mixed_precision.bf16=True"
        )
    if mp.fp8_param_gather and mp.fp8_recipe is None:
        raise RecipeError(
            "mixed_precision.fp8_param_gather", "needs an FP8 recipe (mixed_precision.fp8_recipe)"
        )
    if mp.reuse_grad_buf_for_mxfp8_param_ag and not (mp.fp8_recipe == "mxfp8" and mp.fp8_param_gather):
        raise RecipeError(
            "mixed_precision.reuse_grad_buf_for_mxfp8_param_ag",
            "only with fp8_recipe='mxfp8' and fp8_param_gather=True",
        )
    if m.moe_router_padding_for_quantization and mp.fp8_recipe is None:
        raise RecipeError(
            "model.moe_router_padding_for_quantization", "pads for FP8 GEMMs: needs an FP8 recipe"
        )
    if o.use_precision_aware_optimizer and not o.use_distributed_optimizer:
        raise RecipeError(
            "optimizer.use_precision_aware_optimizer", "needs optimizer.use_distributed_optimizer=True"
        )
    if not o.use_precision_aware_optimizer:
        for name in ("main_grads_dtype", "main_params_dtype", "exp_avg_dtype", "exp_avg_sq_dtype"):
            if getattr(o, name) != "fp32":
                raise RecipeError(
                    f"optimizer.{name}",
                    f"{getattr(o, name)} needs optimizer.use_precision_aware_optimizer=True (else 'fp32')",
                )
    if recipe.comm_overlap.overlap_param_gather and not o.use_distributed_optimizer:
        raise RecipeError(
            "comm_overlap.overlap_param_gather", "needs optimizer.use_distributed_optimizer=True"
        )


def check_recompute(recipe: Recipe) -> None:
    """Megatron-Core's recompute rules (TransformerConfig.__post_init__)."""
    m = recipe.model
    if m.recompute_granularity == "full":
        if m.recompute_method is None:
            raise RecipeError("model.recompute_method", "full recompute needs 'uniform' or 'block'")
        if m.recompute_num_layers is None or m.recompute_num_layers < 1:
            raise RecipeError("model.recompute_num_layers", "full recompute needs a layer count >= 1")
        return
    if m.recompute_granularity != "selective":
        return
    modules = m.recompute_modules or ["core_attn"]
    unknown = sorted(set(modules) - set(RECOMPUTE_MODULES))
    if unknown:
        raise RecipeError(
            "model.recompute_modules", f"unknown {unknown}; allowed: {', '.join(RECOMPUTE_MODULES)}"
        )
    if m.recompute_num_layers is not None:
        raise RecipeError("model.recompute_num_layers", "must be None with selective recompute")
    if "moe_act" in modules and not m.moe_grouped_gemm:
        raise RecipeError("model.recompute_modules", "moe_act needs model.moe_grouped_gemm=True")
    shared_overlap = m.moe_shared_expert_overlap and m.moe_token_dispatcher_type != "flex"
    if "shared_experts" in modules and shared_overlap:
        raise RecipeError(
            "model.recompute_modules", "shared_experts cannot be recomputed with moe_shared_expert_overlap"
        )
    if "moe" in modules and recipe.comm_overlap.overlap_moe_expert_parallel_comm:
        raise RecipeError(
            "model.recompute_modules", "'moe' cannot be recomputed with overlap_moe_expert_parallel_comm"
        )


def check_moe_overlap_and_graphs(recipe: Recipe) -> None:
    """Megatron-Core's rules for EP overlap and partial CUDA graphs (TransformerConfig.__post_init__
    and the alltoall dispatcher's sync points), which the shrink's substitutions can otherwise break."""
    m, co = recipe.model, recipe.comm_overlap
    if m.moe_router_padding_for_quantization and m.moe_token_dispatcher_type == "allgather":
        # Megatron's MoE layer refuses it at model build (measured: benchmarks/proxy_1gpu_tuning.md).
        raise RecipeError(
            "model.moe_router_padding_for_quantization",
            "the allgather dispatcher does not support it: use alltoall or flex, or set it to False",
        )
    scope = m.cuda_graph_scope or []
    if m.cuda_graph_impl == "transformer_engine" and "moe_preprocess" in scope:
        if "moe_router" not in scope:
            raise RecipeError("model.cuda_graph_scope", "'moe_preprocess' needs 'moe_router' in it too")
        if m.moe_token_dispatcher_type == "alltoall" and m.moe_router_padding_for_quantization:
            # Megatron 0.19's config check tests the old name moe_router_padding_for_fp8 and misses this;
            # the dispatcher then asserts "cuda_sync_point must be after cuda_dtoh_point" at step 1.
            raise RecipeError(
                "model.cuda_graph_scope",
                "'moe_preprocess' cannot be graphed with the alltoall dispatcher and "
                "moe_router_padding_for_quantization (a host sync inside the graphed step): drop it "
                "or use the flex dispatcher",
            )
    if co.overlap_moe_expert_parallel_comm:
        where = "comm_overlap.overlap_moe_expert_parallel_comm"
        if m.expert_model_parallel_size == 1:
            raise RecipeError(where, "needs model.expert_model_parallel_size > 1 (nothing to overlap)")
        if m.moe_token_dispatcher_type not in ("alltoall", "flex"):
            raise RecipeError(where, "needs model.moe_token_dispatcher_type 'alltoall' or 'flex'")
        pipelined = m.pipeline_model_parallel_size > 1
        if pipelined and not (m.virtual_pipeline_model_parallel_size or m.pipeline_model_parallel_layout):
            raise RecipeError(where, "with PP > 1 needs a virtual pipeline (VPP or a layout)")
        if m.recompute_granularity == "full" or "moe" in (m.recompute_modules or []):
            raise RecipeError(where, "cannot overlap with full recompute or 'moe' recompute")
        if m.moe_shared_expert_overlap and m.moe_token_dispatcher_type != "flex":
            raise RecipeError(where, "cannot run with model.moe_shared_expert_overlap=True")
        if (m.mtp_num_layers or 0) > 1:
            raise RecipeError(where, "supports at most one MTP layer")
    elif co.delay_wgrad_compute:
        raise RecipeError(
            "comm_overlap.delay_wgrad_compute", "needs comm_overlap.overlap_moe_expert_parallel_comm=True"
        )


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


def plan(recipe: Recipe, mfu: float = 0.4) -> Plan:
    """Check a built recipe and estimate its memory and speed; raises RecipeError on bad input."""
    check_types(recipe)
    if not 0 < mfu <= 1:
        raise RecipeError("mfu", f"must be in (0, 1], got {mfu}")
    gpu = hardware.gpu(recipe.launch.gpu_type)
    check_precision(recipe, gpu)
    check_recompute(recipe)
    check_moe_overlap_and_graphs(recipe)
    stages = pipeline_stages(recipe.model)
    sizes = parallel_sizes(recipe, vpp=max(st.vp_rank for st in stages) + 1)
    ranks = memory.all_ranks(recipe, sizes, stages)
    check_fits(memory.most_loaded(ranks), gpu)
    return Plan(
        recipe_name=recipe.name,
        gpu=gpu,
        sizes=sizes,
        stages=stages,
        parameters=flops.parameter_counts(recipe.model),
        ranks=ranks,
        flops_per_token=flops.model_flops_per_token(recipe.model),
        tokens_per_step=recipe.train.global_batch_size * recipe.model.seq_length,
        mfu=mfu,
        fp8=recipe.mixed_precision.fp8_recipe is not None,
    )
