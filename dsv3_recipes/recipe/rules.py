"""The rules that Megatron, the GPU and the machine impose across a recipe's fields, each written once.

A ``Rule`` is a refusal (``problem``: what is wrong, for the field it names) and, where a recipe that
runs is one substitution away, a ``fix`` (the fields ``--shrink`` sets instead, each with its reason).
The doors run the groups that concern them: ``plan.validate`` the recipe rules (GPU type and Megatron),
``plan.preflight.check_launch`` the launch rules (data, secrets the launch forwards), the train entry
the container rules against the container's ``Capabilities``; ``recipes.shrink`` applies the fix of
every rule that refuses the shrunk recipe on the machine that will run it.

Launch side: standard library only.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

from dsv3_recipes.recipe import hardware, images, resolve
from dsv3_recipes.recipe.schema import Recipe, RecipeError

SHRINK_HINT = "or launch with --shrink N, which substitutes what this machine lacks"
FLEX_EXTENSIONS = {"deepep": "deep_ep_cpp", "hybridep": "hybrid_ep_cpp"}  # the DeepEP build's modules
APEX_WGRAD = "fused_weight_gradient_mlp_cuda"  # apex's fused wgrad kernels (gradient_accumulation_fusion)
TE = "transformer_engine"  # its GEMM stands in for APEX_WGRAD (train.wgrad_fusion)


def importable(module: str) -> bool:
    """Whether ``module`` can be imported here; a dotted name whose parent package is absent is not
    (``importlib.util.find_spec`` raises for it instead of answering None)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@dataclass(frozen=True)
class Capabilities:
    """What the machine that runs a recipe has, for the rules that depend on it."""

    deep_ep: bool  # DeepEP's extension: the flex dispatcher with backend "deepep"
    hybrid_ep: bool  # HybridEP's extension: the flex dispatcher with backend "hybridep"
    # apex's fused wgrad kernels, or TE's GEMM in their place: model.gradient_accumulation_fusion
    wgrad_fusion: bool
    wandb: bool  # WANDB_API_KEY in the environment: logger.wandb_project
    # Transformer Engine's verdict on this GPU for an FP8 recipe, (supported, reason if not); None where
    # no GPU answers (the launch side judges FP8 by the GPU type instead).
    fp8_support: Optional[Callable[[str], tuple[bool, str]]] = field(default=None, compare=False)

    @classmethod
    def here(cls, fp8_support: Optional[Callable[[str], tuple[bool, str]]] = None) -> Capabilities:
        """This machine: for a local run (the launch machine is the GPU machine) and the train entry."""
        return cls(
            deep_ep=importable(FLEX_EXTENSIONS["deepep"]),
            hybrid_ep=importable(FLEX_EXTENSIONS["hybridep"]),
            wgrad_fusion=importable(APEX_WGRAD) or importable(TE),
            wandb="WANDB_API_KEY" in os.environ,
            fp8_support=fp8_support,
        )

    @classmethod
    def image(cls, gpu_type: str) -> Capabilities:
        """The project's container image for this GPU type (docker/): its DeepEP build's backends."""
        backends = images.platform_args(images.PLATFORM_FOR_GPU[gpu_type])["DEEPEP_BACKENDS"].split(",")
        return cls(
            deep_ep="deepep" in backends,
            hybrid_ep="hybridep" in backends,
            wgrad_fusion=True,  # docker/Dockerfile builds no apex, but TE's GEMM stands in for it
            wandb="WANDB_API_KEY" in os.environ,  # forwarded by name from the submitting shell
        )

    def has_flex_backend(self, backend: str) -> bool:
        return self.hybrid_ep if backend == "hybridep" else self.deep_ep


@dataclass(frozen=True)
class Fix:
    """One field ``--shrink`` substitutes, and why."""

    field: str
    value: object
    reason: str


Problem = Callable[[Recipe, Capabilities], Optional[str]]


@dataclass(frozen=True)
class Rule:
    """A refusal naming ``field``, and the substitution that lifts it where there is one."""

    name: str
    field: str
    problem: Problem  # None: the recipe keeps the rule
    fix: Optional[Callable[[Recipe, Capabilities], list[Fix]]] = None

    def check(self, recipe: Recipe, capabilities: Optional[Capabilities] = None) -> None:
        problem = self.problem(recipe, capabilities)  # type: ignore[arg-type]
        if problem is not None:
            raise RecipeError(self.field, problem)


def unmet(recipe: Recipe, needs: dict[str, tuple[object, ...]]) -> Optional[str]:
    """The first field of ``needs`` (dotted path -> its allowed values) the recipe does not set to one of
    them, as ``needs PATH=ALLOWED, got VALUE``; None where every one is."""
    for path, allowed in needs.items():
        value = functools.reduce(getattr, path.split("."), recipe)
        if value not in allowed:
            return f"needs {path}={' or '.join(map(repr, allowed))}, got {value!r}"
    return None


def check_all(rules: Sequence[Rule], recipe: Recipe, capabilities: Optional[Capabilities] = None) -> None:
    """Raise the first rule's refusal, in order."""
    for rule in rules:
        rule.check(recipe, capabilities)


def _gpu(recipe: Recipe) -> hardware.Gpu:
    return hardware.gpu(recipe.launch.gpu_type)


# --- precision against the GPU type -------------------------------------------------------------------


def _mxfp8(r: Recipe, caps: Capabilities) -> Optional[str]:
    gpu = _gpu(r)
    if r.mixed_precision.fp8_recipe != "mxfp8" or gpu.supports_mxfp8:
        return None
    supported = "'tensorwise', 'delayed', 'blockwise'" + (", 'mxfp8'" if gpu.supports_mxfp8 else "")
    return f"mxfp8 needs Blackwell tensor cores (b200, gb200, gb300); {gpu.name} supports {supported}"


MXFP8_NEEDS_BLACKWELL = Rule(
    "mxfp8 needs Blackwell",
    "mixed_precision.fp8_recipe",
    _mxfp8,
    fix=lambda r, caps: [
        Fix(
            "mixed_precision.fp8_recipe",
            "blockwise",
            f"{_gpu(r).name} has no MXFP8 tensor cores; blockwise is the FP8 block-scaled recipe it runs",
        ),
        Fix("mixed_precision.reuse_grad_buf_for_mxfp8_param_ag", False, "only for MXFP8 parameter gather"),
    ],
)

# TE's one-launch grouped GEMM for the experts (``GroupedLinear(use_grouped_tensor=...)``), which TE 2.20
# takes from this variable when Megatron passes none; train.grouped_gemm hands it the counts on the GPU.
TE_GROUPED_GEMM = "NVTE_GROUPED_LINEAR_USE_FUSED_GROUPED_GEMM"


def te_grouped_gemm(r: Recipe) -> bool:
    """Whether the run's environment turns TE's one-launch grouped GEMM on: TE reads the variable as
    ``bool(int(value))``, so any nonzero integer does ("0" and an unset variable do not)."""
    try:
        return int(r.run_env_vars.get(TE_GROUPED_GEMM, "0")) != 0
    except ValueError:  # not an integer: TE refuses it when it builds the layer, not this rule
        return False


def _blockwise_grouped_gemm(r: Recipe, caps: Capabilities) -> Optional[str]:
    gpu = _gpu(r)
    if r.mixed_precision.fp8_recipe != "blockwise" or not te_grouped_gemm(r):
        return None
    if gpu.supports_mxfp8:
        return (
            f"'blockwise' on {gpu.name} (Blackwell) cannot take the one-launch grouped GEMM that "
            f"env_vars.{TE_GROUPED_GEMM} turns on (TE raises at the first forward): set "
            f"env_vars.{TE_GROUPED_GEMM}=0, or mixed_precision.fp8_recipe=mxfp8"
        )
    return (
        f"'blockwise' on {gpu.name} cannot take the one-launch grouped GEMM that env_vars.{TE_GROUPED_GEMM} "
        f"turns on (TE's grouped block quantize needs each expert's tokens in multiples of 128, Megatron "
        f"pads them to 16; a device assert at the first forward): set env_vars.{TE_GROUPED_GEMM}=0"
    )


# Transformer Engine's one-launch grouped GEMM does not run blockwise FP8 on any GPU this library knows.
# Blackwell (compute capability 10.x-11.0): GroupedLinear's forward raises RuntimeError ("use_grouped_tensor
# =True does not support the FP8 block-scaling recipe on Blackwell GPUs"), its grouped-tensor path has no
# MXFP8-broadcast emulation of the block scales. Hopper: TE's predicate takes it (cuBLASLt 13.6+), but its
# grouped quantize (group_quantize_fp8_blockwise.cuh) asserts on the device that each expert's token count
# is a multiple of 128, while Megatron-Core 0.19 pads them to 16 for every FP8 recipe but MXFP8
# (fp8_utils.get_fp8_align_size): proxy_1gpu with blockwise FP8 on an H100 died at its first forward
# (results/fp8_nomtp.failed.log in the results.tgz of benchmarks/results/side_by_side/
# 2026-12-07-h100-fp8-grouped-gemm-g/). TE's per-expert path runs both (the variable at 0). train.grouped_gemm
# asks TE's own predicate at run time; this refuses the recipe before launch.
BLOCKWISE_GROUPED_GEMM = Rule(
    "blockwise FP8 not with TE's one-launch grouped GEMM",
    "mixed_precision.fp8_recipe",
    _blockwise_grouped_gemm,
)

# --- MoE dispatch, EP overlap and CUDA graphs (TransformerConfig.__post_init__, the dispatchers) -------


def _graphed_preprocess_without_router(r: Recipe, caps: Capabilities) -> Optional[str]:
    scope = r.model.cuda_graph_scope or []
    if (
        r.model.cuda_graph_impl == "transformer_engine"
        and "moe_preprocess" in scope
        and "moe_router" not in scope
    ):
        return "'moe_preprocess' needs 'moe_router' in it too"
    return None


def _graphed_host_sync(r: Recipe, caps: Capabilities) -> Optional[str]:
    m = r.model
    if not (
        m.cuda_graph_impl == "transformer_engine"
        and "moe_preprocess" in (m.cuda_graph_scope or [])
        and m.moe_token_dispatcher_type == "alltoall"
        and m.moe_router_padding_for_quantization
    ):
        return None
    # Megatron 0.19's config check tests the old name moe_router_padding_for_fp8 and misses this; the
    # dispatcher then asserts "cuda_sync_point must be after cuda_dtoh_point" at step 1.
    return (
        "'moe_preprocess' cannot be graphed with the alltoall dispatcher and "
        "moe_router_padding_for_quantization (a host sync inside the graphed step): drop it "
        "or use the flex dispatcher"
    )


PADDING_NOT_WITH_ALLGATHER = Rule(
    "router padding not with the allgather dispatcher",
    "model.moe_router_padding_for_quantization",
    # Megatron's MoE layer refuses it at model build (measured: benchmarks/proxy_1gpu_tuning.md).
    lambda r, caps: (
        "the allgather dispatcher does not support it: use alltoall or flex, or set it to False"
        if r.model.moe_router_padding_for_quantization and r.model.moe_token_dispatcher_type == "allgather"
        else None
    ),
)
GRAPHED_PREPROCESS_NEEDS_ROUTER = Rule(
    "graphed moe_preprocess needs moe_router", "model.cuda_graph_scope", _graphed_preprocess_without_router
)
NO_GRAPHED_HOST_SYNC = Rule(
    "no host sync inside a CUDA graph",
    "model.cuda_graph_scope",
    _graphed_host_sync,
    fix=lambda r, caps: [
        Fix(
            "model.cuda_graph_scope",
            [scope for scope in r.model.cuda_graph_scope or [] if scope != "moe_preprocess"],
            "the alltoall dispatcher syncs on the host in its preprocess when router padding is on: "
            "Megatron asserts 'cuda_sync_point must be after cuda_dtoh_point' if that step is graphed",
        )
    ],
)


def _ep_overlap(problem: Callable[[Recipe], Optional[str]]) -> Problem:
    """A rule of overlap_moe_expert_parallel_comm: none applies while it is off."""
    return lambda r, caps: problem(r) if r.comm_overlap.overlap_moe_expert_parallel_comm else None


_EP_OVERLAP = "comm_overlap.overlap_moe_expert_parallel_comm"
EP_OVERLAP_NEEDS_EP = Rule(
    "EP overlap needs EP > 1",
    _EP_OVERLAP,
    _ep_overlap(
        lambda r: (
            "needs model.expert_model_parallel_size > 1 (nothing to overlap)"
            if r.model.expert_model_parallel_size == 1
            else None
        )
    ),
    fix=lambda r, caps: [Fix(_EP_OVERLAP, False, "no expert all-to-all to overlap at EP=1")],
)
EP_OVERLAP_NEEDS_ALLTOALL_OR_FLEX = Rule(
    "EP overlap needs the alltoall or flex dispatcher",
    _EP_OVERLAP,
    _ep_overlap(
        lambda r: (
            "needs model.moe_token_dispatcher_type 'alltoall' or 'flex'"
            if r.model.moe_token_dispatcher_type not in ("alltoall", "flex")
            else None
        )
    ),
)
EP_OVERLAP_NEEDS_VIRTUAL_PIPELINE = Rule(
    "EP overlap with PP needs a virtual pipeline",
    _EP_OVERLAP,
    _ep_overlap(
        lambda r: (
            "with PP > 1 needs a virtual pipeline (VPP or a layout)"
            if r.model.pipeline_model_parallel_size > 1
            and not (r.model.virtual_pipeline_model_parallel_size or r.model.pipeline_model_parallel_layout)
            else None
        )
    ),
)
EP_OVERLAP_NOT_WITH_MOE_RECOMPUTE = Rule(
    "EP overlap not with full or moe recompute",
    _EP_OVERLAP,
    _ep_overlap(
        lambda r: (
            "cannot overlap with full recompute or 'moe' recompute"
            if r.model.recompute_granularity == "full" or "moe" in (r.model.recompute_modules or [])
            else None
        )
    ),
)
EP_OVERLAP_NOT_WITH_SHARED_EXPERT_OVERLAP = Rule(
    "EP overlap not with the shared-expert overlap",
    _EP_OVERLAP,
    _ep_overlap(
        lambda r: (
            "cannot run with model.moe_shared_expert_overlap=True"
            if resolve.shared_expert_overlap(r.model)
            else None
        )
    ),
)
EP_OVERLAP_AT_MOST_ONE_MTP_LAYER = Rule(
    "EP overlap with at most one MTP layer",
    _EP_OVERLAP,
    _ep_overlap(lambda r: "supports at most one MTP layer" if (r.model.mtp_num_layers or 0) > 1 else None),
)
DELAY_WGRAD_NEEDS_EP_OVERLAP = Rule(
    "delayed wgrad needs the EP overlap",
    "comm_overlap.delay_wgrad_compute",
    lambda r, caps: (
        "needs comm_overlap.overlap_moe_expert_parallel_comm=True"
        if r.comm_overlap.delay_wgrad_compute and not r.comm_overlap.overlap_moe_expert_parallel_comm
        else None
    ),
    fix=lambda r, caps: [
        Fix("comm_overlap.delay_wgrad_compute", False, "Megatron allows it only with the EP overlap")
    ],
)


def _counts_on_device(r: Recipe, caps: Capabilities) -> Optional[str]:
    if not r.model.moe_counts_on_device:
        return None
    problem = unmet(
        r,
        {  # the all-gather dispatcher without gathers, TE's fused permute, BF16 grouped GEMM
            "model.moe_token_dispatcher_type": ("allgather",),
            "model.tensor_model_parallel_size": (1,),
            "model.expert_model_parallel_size": (1,),
            "model.expert_tensor_parallel_size": (1,),
            "model.moe_permute_fusion": (True,),
            "model.moe_grouped_gemm": (True,),
            "mixed_precision.fp8_recipe": (None,),  # FP8 pads the counts on the host
        },
    )
    if problem:
        return f"keeps the experts' token counts on the GPU at EP=1: {problem}"
    if not te_grouped_gemm(r):
        return (
            f"needs env_vars.{TE_GROUPED_GEMM}=1: TE's one-launch grouped GEMM is what reads the counts there"
        )
    return None


COUNTS_ON_DEVICE = Rule("the experts' counts on the GPU", "model.moe_counts_on_device", _counts_on_device)

# What Megatron-Core refuses across the MoE dispatch, EP overlap and CUDA-graph fields, in the order
# ``validate`` checks them (the first refusal is the one reported).
MOE_OVERLAP_AND_GRAPHS: tuple[Rule, ...] = (
    PADDING_NOT_WITH_ALLGATHER,
    GRAPHED_PREPROCESS_NEEDS_ROUTER,
    NO_GRAPHED_HOST_SYNC,
    EP_OVERLAP_NEEDS_EP,
    EP_OVERLAP_NEEDS_ALLTOALL_OR_FLEX,
    EP_OVERLAP_NEEDS_VIRTUAL_PIPELINE,
    EP_OVERLAP_NOT_WITH_MOE_RECOMPUTE,
    EP_OVERLAP_NOT_WITH_SHARED_EXPERT_OVERLAP,
    EP_OVERLAP_AT_MOST_ONE_MTP_LAYER,
    DELAY_WGRAD_NEEDS_EP_OVERLAP,
    COUNTS_ON_DEVICE,
)

# --- what the machine that runs the recipe has ----------------------------------------------------------


def _flex_backend_built(r: Recipe, caps: Capabilities) -> Optional[str]:
    backend = resolve.flex_backend(r.model)
    if backend is None or caps.has_flex_backend(backend):
        return None
    return (
        f"{backend!r} needs DeepEP's {FLEX_EXTENSIONS[backend]} extension, which this container lacks: use "
        f"the project's image (docker/), or set model.moe_token_dispatcher_type=alltoall, {SHRINK_HINT}"
    )


FLEX_BACKEND_BUILT = Rule(
    "the flex dispatcher's backend is built",
    "model.moe_flex_dispatcher_backend",
    _flex_backend_built,
    fix=lambda r, caps: [
        Fix(
            "model.moe_token_dispatcher_type",
            "alltoall",
            f"the flex dispatcher's {resolve.flex_backend(r.model)} backend is not built on this machine",
        )
    ],
)
WGRAD_FUSION_KERNELS = Rule(
    "gradient-accumulation fusion needs apex or TE",
    "model.gradient_accumulation_fusion",
    lambda r, caps: (
        f"needs apex's {APEX_WGRAD} or Transformer Engine's GEMM in its place, and this container has "
        "neither: install either, or set it to False"
        if r.model.gradient_accumulation_fusion and not caps.wgrad_fusion
        else None
    ),
    fix=lambda r, caps: [
        Fix("model.gradient_accumulation_fusion", False, "neither apex's fused wgrad kernels nor TE is here")
    ],
)


def _fp8_runs(r: Recipe, caps: Capabilities) -> Optional[str]:
    fp8 = r.mixed_precision.fp8_recipe
    if fp8 is None or caps.fp8_support is None:
        return None
    supported, reason = caps.fp8_support(fp8)
    return None if supported else f"{fp8!r} does not run on this GPU ({reason}); {SHRINK_HINT}"


FP8_RUNS_ON_THIS_GPU = Rule("the GPU runs the FP8 recipe", "mixed_precision.fp8_recipe", _fp8_runs)

# What the train entry refuses before any model is built, on the container's own Capabilities.
CONTAINER: tuple[Rule, ...] = (FLEX_BACKEND_BUILT, WGRAD_FUSION_KERNELS, FP8_RUNS_ON_THIS_GPU)

# --- what a launch needs --------------------------------------------------------------------------------

DATA_OR_MOCK = Rule(
    "indexed data or mock data",
    "dataset.data_paths",
    lambda r, caps: (
        "empty: give .bin/.idx prefixes ('dataset.data_paths=[\"/data/c4_text_document\"]') "
        "or set dataset.mock=True"
        if not r.dataset.mock and not r.dataset.data_paths
        else None
    ),
    fix=lambda r, caps: [
        Fix("dataset.mock", True, "no corpus given: pass dataset.data_paths to train on text"),
        Fix("dataset.validation_paths", [], "mock data"),
    ],
)
WANDB_KEY = Rule(
    "W&B needs its key",
    "logger.wandb_project",
    lambda r, caps: (
        "is set but WANDB_API_KEY is not exported (or set logger.wandb_project=None)"
        if r.logger.wandb_project and not caps.wandb
        else None
    ),
    fix=lambda r, caps: [Fix("logger.wandb_project", None, "no WANDB_API_KEY in this environment")],
)

# The substitutions ``--shrink`` makes, in this order: each rule is judged on the recipe as the fixes
# before it left it (the flex dispatcher's fallback to alltoall can then need the graph-scope fix).
SHRINK_FIXES: tuple[Rule, ...] = (
    MXFP8_NEEDS_BLACKWELL,
    FLEX_BACKEND_BUILT,
    NO_GRAPHED_HOST_SYNC,
    EP_OVERLAP_NEEDS_EP,
    DELAY_WGRAD_NEEDS_EP_OVERLAP,
    WGRAD_FUSION_KERNELS,
    WANDB_KEY,
    DATA_OR_MOCK,
)
