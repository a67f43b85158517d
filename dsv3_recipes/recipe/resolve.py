"""Every value a recipe implies but does not state, derived in one place.

Megatron derives sizes and switches from the flags it is given (DP from the world and the model
parallel sizes, sequence parallelism only at TP > 1, the flex dispatcher's backend defaulting to
DeepEP, the shared-expert overlap that the flex dispatcher does itself, the virtual pipeline a layout
implies). The planner, the memory and step-time models, the container and the MLPerf log read these
values from ``Resolved`` and never re-derive them.

Standard library only: the launch side resolves recipes on a login node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from dsv3_recipes.recipe import hardware
from dsv3_recipes.recipe.hardware import Gpu
from dsv3_recipes.recipe.layout import Stage, pipeline_stages, stages_of_rank
from dsv3_recipes.recipe.parallel import ParallelSizes, parallel_sizes
from dsv3_recipes.recipe.schema import ModelConfig, Recipe

DEFAULT_FLEX_BACKEND = "deepep"  # Megatron-Core's moe_flex_dispatcher_backend default
DEFAULT_RECOMPUTE_MODULES = ("core_attn",)  # what Megatron-Core fills in for an empty selective list


def flex_backend(m: ModelConfig) -> Optional[str]:
    """The flex dispatcher's backend as Megatron runs it; None with another dispatcher."""
    if m.moe_token_dispatcher_type != "flex":
        return None
    return m.moe_flex_dispatcher_backend or DEFAULT_FLEX_BACKEND


def shared_expert_overlap(m: ModelConfig) -> bool:
    """As Megatron runs it: the flex dispatcher overlaps the shared expert itself (Bridge's
    apply_flex_dispatcher_backend turns the flag off)."""
    return m.moe_shared_expert_overlap and m.moe_token_dispatcher_type != "flex"


def recompute_modules(m: ModelConfig) -> tuple[str, ...]:
    """Selective recompute's modules, Megatron-Core's default filled in; empty without it."""
    if m.recompute_granularity != "selective":
        return ()
    return tuple(m.recompute_modules or DEFAULT_RECOMPUTE_MODULES)


@dataclass(frozen=True)
class Resolved:
    """A recipe with everything Megatron will derive from it."""

    recipe: Recipe
    gpu: Gpu
    sizes: ParallelSizes
    stages: tuple[Stage, ...]
    dispatcher: str  # 'alltoall' | 'allgather' | 'flex'
    flex_backend: Optional[str]  # 'deepep' | 'hybridep' with the flex dispatcher, else None
    shared_expert_overlap: bool  # as Megatron runs it: the flex dispatcher overlaps the shared expert itself
    ep_overlap: bool  # overlap_moe_expert_parallel_comm
    delay_wgrad: bool
    fp8_recipe: Optional[str]
    recompute_granularity: Optional[str]
    recompute_modules: tuple[str, ...]  # selective recompute's modules, Megatron's default filled in
    cuda_graph_scope: tuple[str, ...]  # graphed parts of each layer; empty without CUDA graphs
    mtp_layers: int

    @property
    def pipeline_ranks(self) -> int:
        return self.sizes.pp

    def chunks_of(self, pp_rank: int) -> list[Stage]:
        """The model chunks one pipeline rank holds, in virtual-stage order."""
        return stages_of_rank(list(self.stages), pp_rank)


def resolve(recipe: Recipe) -> Resolved:
    """Derive every implied value; a recipe whose layout or parallel sizes cannot hold raises the
    RecipeError that names the field (``layout`` and ``parallel`` check what they derive)."""
    m = recipe.model
    stages = tuple(pipeline_stages(m))
    sizes = parallel_sizes(recipe, vpp=max(st.vp_rank for st in stages) + 1)
    return Resolved(
        recipe=recipe,
        gpu=hardware.gpu(recipe.launch.gpu_type),
        sizes=sizes,
        stages=stages,
        dispatcher=m.moe_token_dispatcher_type,
        flex_backend=flex_backend(m),
        shared_expert_overlap=shared_expert_overlap(m),
        ep_overlap=recipe.comm_overlap.overlap_moe_expert_parallel_comm,
        delay_wgrad=recipe.comm_overlap.delay_wgrad_compute,
        fp8_recipe=recipe.mixed_precision.fp8_recipe,
        recompute_granularity=m.recompute_granularity,
        recompute_modules=recompute_modules(m),
        cuda_graph_scope=tuple(m.cuda_graph_scope or ()) if m.cuda_graph_impl != "none" else (),
        mtp_layers=m.mtp_num_layers or 0,
    )
