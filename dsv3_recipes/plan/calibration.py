"""Measured per-layer costs: what one rank of a recipe computes, as a one-GPU stand-in, and its timings.

A rank of a 671B recipe runs, per micro-batch, its layers' attention on ``heads / TP`` heads, its dense
MLPs at ``ffn / TP``, the shared expert at ``shared / TP``, and ``num_experts / EP`` local experts on
the token copies the all-to-all brings it (balanced routing: ``seq x MBS / TP x top-k x ETP``), then the
vocabulary-parallel output layer on ``vocab / TP``. ``stand_in(resolved)`` is a one-GPU recipe of
exactly those shapes (TP = PP = EP = 1; two decoder layers, one dense and one MoE, and the recipe's MTP
layer), with every kernel choice of the recipe kept. What the one GPU cannot show -- communication,
the pipeline schedule, CUDA graphs' host savings -- the step-time model adds (``plan.step_time``).

``benchmarks/calibrate.py`` builds each stand-in with Megatron-Core and Transformer Engine on the GPU
at hand and times its parts (``train.calibrate``); the result is the committed calibration file that
the planner reads (``dsv3_recipes/plan/calibration_h200.json``). Launch side: standard library only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from functools import cache, cached_property
from importlib import resources
from typing import Optional

from dsv3_recipes.plan import flops
from dsv3_recipes.recipe import hardware
from dsv3_recipes.recipe.resolve import Resolved
from dsv3_recipes.recipe.schema import LaunchConfig, MixedPrecisionConfig, ModelConfig, Recipe, RecipeError

CALIBRATION_FILE = "calibration_h200.json"
MEASURED_GPU = "h200"
# The flex dispatcher (DeepEP/HybridEP) exists only between ranks: on one GPU the stand-in permutes
# locally as the all-to-all dispatcher does, and the step-time model adds the transfer.
LOCAL_DISPATCHER = "alltoall"
# Hopper has no MXFP8: the block-scaled FP8 recipe it runs stands in, and the GPU scaling applies
# Blackwell's FP8 rate to the GEMMs (GPU_SCALING below).
STAND_IN_FP8 = {"mxfp8": "blockwise"}
# Bytes each local expert parameter moves per pass whatever the tokens, as a stand-in runs (no DDP: the
# weight gradient accumulates into the bf16 .grad; TE quantizes FP8 weights again on every pass):
# (forward+backward, forward). BF16: read in forward and dgrad, .grad read and written. FP8: the cast
# reads bf16 and writes the rowwise and columnwise FP8 copies, the GEMMs read one each, .grad as BF16.
EXPERT_WEIGHT_BYTES = {"bf16": (2 + 2 + 4, 2), "fp8": (2 + 2 + 1 + 1 + 4, 2 + 2 + 1)}
LABEL_EXPERTS = re.compile(r"\bh(\d+) .*\bexperts(\d+)x(\d+)\b")  # StandIn.label's shapes


def _changed(config: type, values: dict[str, object]) -> dict[str, object]:
    """The values that differ from the config's defaults: a field added later (at its default) keeps
    every measured key."""
    default = {
        f.name: json.dumps(f.default if f.default_factory is dataclasses.MISSING else f.default_factory())
        for f in dataclasses.fields(config)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }
    return {k: v for k, v in values.items() if default.get(k) != json.dumps(v)}


@dataclass(frozen=True)
class StandIn:
    """The one-GPU recipe whose parts cost what one rank's parts cost, and how to read its timings.

    It is the rank's recipe with the ``model`` and ``precision`` fields changed as listed; ``recipe``
    builds it (the benchmark does; the planner needs only its key). ``moe_micro_batch`` sequences go
    through it so that its MoE layer receives the rank's routed copies with ``min(top-k, local
    experts)`` copies per token; the token-linear parts measured at that size are scaled by
    ``micro_batch / moe_micro_batch`` (the MoE block is not: its copies are the rank's)."""

    parent: Recipe
    model: dict[str, object]  # the stand-in's model fields
    precision: dict[str, object]  # its mixed_precision fields
    micro_batch: int
    moe_micro_batch: int
    full_recompute: bool  # the rank recomputes each layer's forward (Megatron's full recompute)

    @property
    def key(self) -> str:
        """What identifies a measurement: every field that changes the kernels a stand-in runs."""
        fields = {
            "model": _changed(ModelConfig, self.model),
            "micro_batch_size": self.moe_micro_batch,
            "mixed_precision": _changed(MixedPrecisionConfig, self.precision),
            "deterministic": self.parent.train.deterministic,
            "env": self.env,
        }
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def env(self) -> dict[str, str]:
        """The environment the rank runs with (TE's NVTE_* switches change its kernels)."""
        return self.parent.run_env_vars

    @property
    def fp8_recipe(self) -> Optional[str]:
        return self.precision["fp8_recipe"]  # type: ignore[return-value]

    @property
    def token_scale(self) -> float:
        return self.micro_batch / self.moe_micro_batch

    @property
    def local_expert_params(self) -> int:
        m = self.model
        return expert_params(m["hidden_size"], m["num_moe_experts"], m["moe_ffn_hidden_size"])  # type: ignore[arg-type]

    @property
    def label(self) -> str:
        m = self.model
        return (
            f"h{m['hidden_size']} heads{m['num_attention_heads']} ffn{m['ffn_hidden_size']} "
            f"experts{m['num_moe_experts']}x{m['moe_ffn_hidden_size']} top{m['moe_router_topk']} "
            f"shared{m['moe_shared_expert_intermediate_size']} mbs{self.moe_micro_batch} "
            f"vocab{m['vocab_size']} {self.fp8_recipe or 'bf16'} mtp{m['mtp_num_layers'] or 0}"
        )

    @cached_property
    def model_config(self) -> ModelConfig:
        """The stand-in's model, checked (what the planner needs to scale a neighbour's case to it)."""
        return ModelConfig(**self.model)

    @cached_property
    def recipe(self) -> Recipe:
        """The stand-in as a recipe of its own, checked like any other."""
        r = self.parent
        return Recipe(
            name=f"{r.name}_standin",
            model=self.model_config,
            train=dataclasses.replace(
                r.train,
                micro_batch_size=self.moe_micro_batch,
                global_batch_size=self.moe_micro_batch,
                train_iters=1,
                train_samples=None,
            ),
            optimizer=r.optimizer,
            mixed_precision=MixedPrecisionConfig(**self.precision),
            launch=LaunchConfig(gpu_type=MEASURED_GPU, num_nodes=1, gpus_per_node=1),
            env_vars=dict(r.env_vars),
        )


def expert_params(hidden: int, local_experts: int, ffn: int) -> int:
    """Parameters of a rank's routed experts (SwiGLU: fc1 is 2 x ffn wide)."""
    return local_experts * 3 * hidden * ffn


def stand_in(resolved: Resolved) -> StandIn:
    """The one-GPU stand-in of the most common rank of ``resolved`` (every rank of a stage computes
    alike; stages differ only in how many layers they hold, which the step-time model counts)."""
    r, s = resolved.recipe, resolved.sizes
    m = r.model
    if s.cp > 1:
        raise RecipeError("model.context_parallel_size", "the calibration has no context-parallel stand-in")
    local_experts = m.num_moe_experts // s.ep
    copies_per_token = m.moe_router_topk * s.etp / s.tp  # routed copies per sequence position of the rank
    if copies_per_token != int(copies_per_token):
        raise RecipeError(
            "model.expert_tensor_parallel_size",
            f"top-k x ETP / TP = {copies_per_token} is not a whole number of copies",
        )
    topk = int(copies_per_token)
    moe_micro_batch = r.train.micro_batch_size
    if topk > local_experts:  # more copies per token than local experts: feed more tokens instead
        if (topk * moe_micro_batch) % local_experts:
            raise RecipeError(
                "model.expert_model_parallel_size",
                f"{local_experts} local experts cannot take {topk} copies per token in whole sequences",
            )
        moe_micro_batch = topk * moe_micro_batch // local_experts
        topk = local_experts
    model = dataclasses.asdict(m) | dict(
        num_layers=2,
        first_k_dense_replace=1,
        num_attention_heads=m.num_attention_heads // s.tp,
        ffn_hidden_size=m.ffn_hidden_size // s.tp,
        num_moe_experts=local_experts,
        moe_ffn_hidden_size=m.moe_ffn_hidden_size // s.etp,
        moe_shared_expert_intermediate_size=m.moe_shared_expert_intermediate_size // s.tp,
        moe_router_topk=topk,
        mtp_num_layers=1,  # measured once for recipes with and without MTP (the model adds it or not)
        moe_router_num_groups=0,  # group-limited routing picks among all 256 experts, not the local ones
        moe_router_group_topk=0,
        moe_router_force_load_balancing=True,  # balanced routing, as the published benchmarks force it
        vocab_size=flops.padded_vocab_size(m) // s.tp,
        make_vocab_size_divisible_by=1,
        tensor_model_parallel_size=1,
        pipeline_model_parallel_size=1,
        virtual_pipeline_model_parallel_size=None,
        pipeline_model_parallel_layout=None,
        context_parallel_size=1,
        expert_model_parallel_size=1,
        expert_tensor_parallel_size=1,
        sequence_parallel=False,
        moe_token_dispatcher_type=LOCAL_DISPATCHER if resolved.dispatcher == "flex" else resolved.dispatcher,
        moe_flex_dispatcher_backend=None,
        cuda_graph_impl="none",  # eager: the step-time model adds what graphs save on the host
        cuda_graph_scope=None,
        use_te_rng_tracker=False,
        gradient_accumulation_fusion=False,
        # Full recompute is a schedule of the block: the stand-in times each layer once with and once
        # without autograd, and the model adds the recomputed forward.
        recompute_granularity=None if m.recompute_granularity == "full" else m.recompute_granularity,
        recompute_method=None,
        recompute_num_layers=None,
    )
    mp = r.mixed_precision
    precision = dataclasses.asdict(mp) | dict(
        fp8_recipe=STAND_IN_FP8.get(mp.fp8_recipe, mp.fp8_recipe) if mp.fp8_recipe else None,
        fp8_param_gather=False,  # no data-parallel gather on one GPU
        reuse_grad_buf_for_mxfp8_param_ag=False,
    )
    return StandIn(
        parent=r,
        model=model,
        precision=precision,
        micro_batch=r.train.micro_batch_size,
        moe_micro_batch=moe_micro_batch,
        full_recompute=m.recompute_granularity == "full",
    )


@dataclass(frozen=True)
class PartTiming:
    """Seconds for one pass of a part over the stand-in's micro-batch, and the share of its GPU time in
    tensor-core kernels (GEMMs, attention): that share scales with a GPU's peak rate, the rest with its
    memory bandwidth. ``kernel_s`` (measured from 211572b, 2026-12-06, on) is the kernels' time in a
    forward+backward pass; the rest of the pass the GPU waited for the host, which another GPU's rates
    do not change (an H100 ran host-bound checks 1.18-1.24x slower than the H200, not its 1.43x
    bandwidth ratio). Without it the whole pass scales."""

    forward_backward_s: float
    forward_s: float  # without autograd: what full recompute runs again
    gemm_share: float
    attention_share: float
    kernels: float  # kernel launches per pass: what CUDA graphs take off the host
    kernel_s: Optional[float] = None

    @property
    def host_wait_s(self) -> float:
        """The forward+backward's time outside kernels (0 where not measured; kernels on side streams
        overlap, so their sum may exceed the wall time)."""
        return 0.0 if self.kernel_s is None else max(0.0, self.forward_backward_s - self.kernel_s)

    @property
    def on_gpu_s(self) -> float:
        """The forward+backward's time in kernels: the part another GPU's rates change."""
        return self.forward_backward_s - self.host_wait_s


PARTS = ("dense_layer", "moe_layer", "moe_block", "embedding", "head")


def part_flops(stand: StandIn) -> dict[str, float]:
    """Forward FLOPs of each measured part over the stand-in's micro-batch (the embedding: values read),
    for scaling a measured case to a stand-in of another shape."""
    m = stand.model_config
    tokens = m.seq_length * stand.moe_micro_batch
    attention = flops.attention_core_flops_per_token(m)
    per_token = {
        "dense_layer": flops.matmul_flops_per_token(flops.decoder_layer_weights(m, 0)) + attention,
        "moe_layer": flops.matmul_flops_per_token(flops.decoder_layer_weights(m, 1)) + attention,
        "moe_block": flops.matmul_flops_per_token(flops.moe_weights(m)),
        "embedding": float(m.hidden_size),
        "head": flops.matmul_flops_per_token(flops.loss_weights(m)),
        "mtp": flops.matmul_flops_per_token(flops.mtp_layer_weights(m) + flops.loss_weights(m)) + attention,
    }
    return {name: value * tokens for name, value in per_token.items()}


@dataclass(frozen=True)
class StepTiming:
    """What a rank's train step adds around the stand-in's passes (``train.calibrate.measure_step``):
    Megatron's DDP wrapper and the recipe's FP8 parameters per micro-batch, the step after the last
    backward (gradient finalization, the distributed optimizer, zeroing) per step; over ``params``."""

    params: int
    param_tensors: int
    fp8_params: bool
    unwrapped_forward_backward_s: float  # the same stand-in's forward+backward without DDP
    wrapped_forward_backward_s: float  # with it, as a micro-batch before the step's last
    after_backward_s: float

    @property
    def wrapper_s_per_param(self) -> float:
        """Per micro-batch: the gradient hooks' accumulation (no fusion without apex) and what FP8
        parameters change in the passes (they skip the weights' cast), per parameter. Without FP8
        parameters the wrapper only adds work: a wrapped pass measured faster is timing noise (28eb6f37
        on the H200: 141.9 against 147.7 ms), and counts as no time."""
        added = self.wrapped_forward_backward_s - self.unwrapped_forward_backward_s
        return (added if self.fp8_params else max(0.0, added)) / self.params

    @property
    def after_backward_s_per_param(self) -> float:
        return self.after_backward_s / self.params


@dataclass(frozen=True)
class CaseTiming:
    key: str
    label: str
    fp8_recipe: Optional[str]
    flops: dict[str, float]  # part_flops of the stand-in
    dense_layer: PartTiming
    moe_layer: PartTiming
    moe_block: PartTiming  # the MoE layer's MLP alone: router, permute, experts, shared expert, unpermute
    embedding: PartTiming
    head: PartTiming  # final norm, output layer, cross-entropy
    mtp: Optional[PartTiming]  # what the MTP depth adds to the whole stand-in (every stand-in has one)
    whole_model_s: float  # the stand-in's forward+backward in one piece (a check on the parts' sum)
    step: Optional[StepTiming] = None  # measured from 2026-12-04 on; earlier cases have none

    @property
    def local_expert_params(self) -> int:
        h, experts, ffn = map(int, LABEL_EXPERTS.search(self.label).groups())  # type: ignore[union-attr]
        return expert_params(h, experts, ffn)


@dataclass(frozen=True)
class OptimizerTiming:
    """Seconds per parameter of one optimizer step on the measured GPU (memory-bound)."""

    adam_s_per_param: dict[str, float]  # by the optimizer's state dtypes, e.g. "fp32/bf16/bf16"
    grad_norm_s_per_param: float


@dataclass(frozen=True)
class Calibration:
    gpu: str
    command: str
    machine: str
    date: str
    commit: str
    cases: dict[str, CaseTiming]
    optimizer: OptimizerTiming

    def case_for(self, stand: StandIn) -> tuple[CaseTiming, str]:
        """The measured case of ``stand``, or the nearest one of its precision scaled by FLOPs, and a
        sentence saying which."""
        if stand.key in self.cases:
            return self.cases[stand.key], f"measured stand-in {stand.key} ({stand.label})"
        fp8 = stand.fp8_recipe
        wanted = part_flops(stand)
        # The same FP8 recipe if one was measured, else any FP8 one (FP8 against BF16 otherwise).
        same = [c for c in self.cases.values() if c.fp8_recipe == fp8] or [
            c for c in self.cases.values() if (c.fp8_recipe is None) == (fp8 is None)
        ]
        if not same:
            raise RecipeError(
                "calibration",
                f"no measured stand-in in {fp8 or 'bf16'} in {CALIBRATION_FILE}: run benchmarks/calibrate.py "
                "with this recipe on a GPU",
            )
        nearest = min(same, key=lambda c: abs(math.log(c.flops["moe_layer"] / wanted["moe_layer"])))
        how = "scaled by FLOPs"
        if nearest.local_expert_params != stand.local_expert_params:
            how += (
                f" and its expert weights' traffic from {nearest.local_expert_params:,} to "
                f"{stand.local_expert_params:,} parameters"
            )
        return scaled(nearest, wanted, stand.local_expert_params, self.gpu), (
            f"stand-in {stand.key} ({stand.label}) not measured: case {nearest.key} ({nearest.label}) {how}"
        )


def expert_weight_s(case: CaseTiming, params: int, gpu: str) -> tuple[float, float]:
    """(forward+backward, forward) seconds of the measured GPU's memory that ``params`` local expert
    parameters cost in one pass of an MoE layer of ``case``'s precision, whatever its tokens."""
    per_param = EXPERT_WEIGHT_BYTES["fp8" if case.fp8_recipe else "bf16"]
    bandwidth = hardware.gpu(gpu).hbm_tb_s * 1e12
    return per_param[0] * params / bandwidth, per_param[1] * params / bandwidth


def scaled(case: CaseTiming, wanted: dict[str, float], local_expert_params: int, gpu: str) -> CaseTiming:
    """``case`` with each part's kernel time scaled by the ratio of FLOPs (shares, launches and the time
    the GPU waited for their launches kept), except the local experts' weight traffic in the parts that
    hold an MoE layer: that follows the wanted rank's expert count (fewer local experts at the same
    routed load read fewer weights) on ``gpu``, the measured one."""
    have = expert_weight_s(case, case.local_expert_params, gpu)
    want = expert_weight_s(case, local_expert_params, gpu)

    def part(name: str, timing: Optional[PartTiming]) -> Optional[PartTiming]:
        if timing is None:
            return None
        ratio = wanted[name] / case.flops[name]
        moe = name in ("moe_layer", "moe_block", "mtp")

        def on_gpu(seconds: float, pass_index: int) -> float:
            return (seconds - have[pass_index]) * ratio + want[pass_index] if moe else seconds * ratio

        kernel_s = on_gpu(timing.on_gpu_s, 0)  # the whole pass where kernel time was not measured
        return dataclasses.replace(
            timing,
            forward_backward_s=kernel_s + timing.host_wait_s,
            forward_s=on_gpu(timing.forward_s, 1),
            kernel_s=None if timing.kernel_s is None else kernel_s,
        )

    return dataclasses.replace(
        case,
        **{name: part(name, getattr(case, name)) for name in (*PARTS, "mtp")},
        flops=wanted,
        whole_model_s=float("nan"),
    )


def from_dict(data: dict) -> Calibration:
    cases = {}
    for key, c in data["cases"].items():
        parts = {name: PartTiming(**c[name]) for name in PARTS}
        cases[key] = CaseTiming(
            key=key,
            label=c["label"],
            fp8_recipe=c["fp8_recipe"],
            flops=c["flops"],
            mtp=PartTiming(**c["mtp"]) if c.get("mtp") else None,
            whole_model_s=c["whole_model_s"],
            step=StepTiming(**c["step"]) if c.get("step") else None,
            **parts,
        )
    return Calibration(
        gpu=data["gpu"],
        command=data["command"],
        machine=data["machine"],
        date=data["date"],
        commit=data["commit"],
        cases=cases,
        optimizer=OptimizerTiming(**data["optimizer"]),
    )


@cache
def load() -> Calibration:
    """The committed calibration (package data, so that an installed launch side has it too)."""
    text = (resources.files(__package__) / CALIBRATION_FILE).read_text()
    return from_dict(json.loads(text))
