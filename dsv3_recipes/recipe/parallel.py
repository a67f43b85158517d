"""Parallel group sizes of a recipe and the divisibility rules Megatron enforces on them.

Megatron-Core builds two rank grids over the same GPUs (parallel_state.initialize_model_parallel):
dense layers use TP x CP x DP x PP, MoE experts use ETP x EP x expert-DP x PP. The distributed
optimizer shards dense parameters over DP x CP and expert parameters over expert-DP.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsv3_recipes.recipe.schema import Recipe, RecipeError


@dataclass(frozen=True)
class ParallelSizes:
    world: int
    tp: int
    pp: int
    vpp: int  # model chunks per pipeline rank (1: no interleaving)
    cp: int
    ep: int
    etp: int
    dp: int  # data-parallel replicas of the dense layers
    expert_dp: int  # data-parallel replicas of each expert
    sequence_parallel: bool  # effective: requested and TP > 1, as Megatron-LM does
    num_microbatches: int  # per pipeline, per optimizer step

    @property
    def dense_optimizer_shards(self) -> int:
        """Ranks that share one dense parameter's optimizer state (Megatron's dp-cp group)."""
        return self.dp * self.cp

    def describe(self) -> str:
        vpp = f" VPP{self.vpp}" if self.vpp > 1 else ""
        sp = " SP" if self.sequence_parallel else ""
        return (
            f"TP{self.tp}{sp} PP{self.pp}{vpp} CP{self.cp} DP{self.dp} | EP{self.ep} ETP{self.etp} "
            f"expert-DP{self.expert_dp}"
        )


def data_parallel(world: int, tp: int, pp: int, cp: int) -> int:
    """Replicas of the dense layers: the GPUs over TP x PP x CP (Megatron's data-parallel group)."""
    return world // (tp * pp * cp)


def parallel_sizes(recipe: Recipe, vpp: int) -> ParallelSizes:
    """Group sizes after checking every divisibility Megatron needs; ``vpp`` comes from the layout."""
    m, t = recipe.model, recipe.train
    world = recipe.launch.num_gpus
    # Each size is >= 1 and the model's own rules (experts over EP, router groups) hold: the sections
    # check them when built (recipe.Section), and validate.validate re-checks them before this runs.
    tp, pp, cp = m.tensor_model_parallel_size, m.pipeline_model_parallel_size, m.context_parallel_size
    ep, etp = m.expert_model_parallel_size, m.expert_tensor_parallel_size
    if world % (tp * pp * cp):
        raise RecipeError(
            "launch.num_nodes",
            f"{world} GPUs not divisible by TP x PP x CP = {tp} x {pp} x {cp} = {tp * pp * cp}",
        )
    if world % (etp * ep * pp):
        raise RecipeError(
            "model.expert_model_parallel_size",
            f"{world} GPUs not divisible by ETP x EP x PP = {etp} x {ep} x {pp} = {etp * ep * pp}",
        )
    if m.moe_router_fusion and m.moe_router_group_topk and m.moe_router_topk % m.moe_router_group_topk:
        # TE's fused top-k kernel asserts this (measured on the 1-GPU proxy, benchmarks/proxy_1gpu_tuning.md).
        raise RecipeError(
            "model.moe_router_fusion",
            f"TE's fused router needs moe_router_topk={m.moe_router_topk} divisible by "
            f"moe_router_group_topk={m.moe_router_group_topk}: set it to False",
        )
    if m.num_attention_heads % tp:
        raise RecipeError(
            "model.tensor_model_parallel_size",
            f"{m.num_attention_heads} attention heads not divisible by TP={tp}",
        )
    if m.ffn_hidden_size % tp or m.moe_shared_expert_intermediate_size % tp:
        raise RecipeError(
            "model.tensor_model_parallel_size",
            f"FFN widths (dense {m.ffn_hidden_size}, shared expert "
            f"{m.moe_shared_expert_intermediate_size}) not divisible by TP={tp}",
        )
    if m.moe_ffn_hidden_size % etp:
        raise RecipeError(
            "model.expert_tensor_parallel_size",
            f"expert FFN width {m.moe_ffn_hidden_size} not divisible by ETP={etp}",
        )
    if tp > 1 and m.num_moe_experts and not m.sequence_parallel:
        raise RecipeError(
            "model.sequence_parallel", f"MoE with TP={tp} needs sequence parallelism: set it to True"
        )
    sequence_parallel = m.sequence_parallel and tp > 1
    shards = (2 * cp if cp > 1 else 1) * (tp if sequence_parallel else 1)
    if m.seq_length % shards:
        raise RecipeError(
            "model.seq_length",
            f"{m.seq_length} not divisible by {shards} (2 x CP={cp} for causal load balancing"
            f"{f', x TP={tp} for sequence parallelism' if sequence_parallel else ''})",
        )
    if vpp > 1 and pp == 1:
        raise RecipeError(
            "model.virtual_pipeline_model_parallel_size",
            "the interleaved schedule needs pipeline_model_parallel_size > 1",
        )

    dp = data_parallel(world, tp, pp, cp)
    per_step = t.micro_batch_size * dp
    if t.global_batch_size % per_step:
        raise RecipeError(
            "train.global_batch_size",
            f"{t.global_batch_size} not divisible by micro_batch_size x DP = "
            f"{t.micro_batch_size} x {dp} = {per_step}",
        )
    num_microbatches = t.global_batch_size // per_step
    if vpp > 1 and num_microbatches % pp:
        # Megatron's interleaved schedule runs micro-batches in groups of PP per model chunk
        # (microbatch_group_size_per_vp_stage) and refuses a partial last group.
        raise RecipeError(
            "train.global_batch_size",
            f"the interleaved schedule needs a multiple of PP={pp} micro-batches per step, got "
            f"{num_microbatches} (GBS {t.global_batch_size} / (MBS {t.micro_batch_size} x DP {dp}))",
        )
    return ParallelSizes(
        world=world,
        tp=tp,
        pp=pp,
        vpp=vpp,
        cp=cp,
        ep=ep,
        etp=etp,
        dp=dp,
        expert_dp=world // (etp * ep * pp),
        sequence_parallel=sequence_parallel,
        num_microbatches=num_microbatches,
    )
