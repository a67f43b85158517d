"""The step time of a recipe, part by part, from measured per-layer costs.

Per pipeline rank and micro-batch, each layer costs what its one-GPU stand-in measured
(``plan.calibration``), scaled to the recipe's GPU: its kernels' tensor-core share by the ratio of peak
rates (FP8 or BF16 for the GEMMs, BF16 for attention), the rest by the ratio of memory bandwidths; the
time its GPU waited for the host stays as measured, less the share of it that belongs to the launches the
recipe's CUDA graphs capture (the stand-in runs eager). Full recompute runs each layer's forward again.
Around the compute:

- **expert-parallel dispatch and combine**: the rank's tokens (``seq x MBS / TP`` of ``hidden x ETP`` BF16
  values) cross the network four times per MoE layer (dispatch and combine, forward and backward), six
  when the layer's forward is recomputed (full recompute, or selective ``moe``: Megatron's checkpoint of
  the MoE layer re-runs its dispatch and combine in the backward): to peers in the NVLink domain over
  NVLink, to the others over the scale-out NIC, each at a fitted share of its rate. The all-to-all
  dispatcher sends one copy per routed expert (top-k per token); the flex dispatchers (DeepEP, HybridEP)
  send a token once to each GPU of the domain that holds one of its experts, and once to each remote
  domain that does (``_destinations``). With ``overlap_moe_expert_parallel_comm`` only what exceeds the
  layer's compute is exposed.
- **tensor-parallel collectives**: with sequence parallelism an all-gather and a reduce-scatter around
  the attention and around the MLP, forward and backward, over NVLink.
- **pipeline**: the slowest rank sets the pace; warm-up and cool-down of the 1F1B schedule cost
  ``(PP - 1) / VPP`` of its time per micro-batch (the bubble ``(p - 1) / (v m)``); without interleaving
  the activations and gradients crossing each stage boundary are exposed.
- **data-parallel sync** (distributed optimizer): the reduce-scatter of the rank's gradients and the
  all-gather of its parameters over their data-parallel groups, exposed beyond the last micro-batch's
  backward and the first one's forward when overlapped.
- **DDP wrapper** (per micro-batch) and **optimizer** (the step after the last backward): what the
  stand-in measured around its passes, wrapped in Megatron's DDP with the recipe's FP8 parameters and
  stepped by its distributed optimizer, per parameter, for the rank's parameters (the optimizer's
  shard); a case measured before that (2026-12-03) has Adam and the gradient norm per parameter
  instead, and no wrapper part. Both scale by memory bandwidth.
- **host**: kernel launches the GPU waits for, a fitted time per launch; CUDA graphs take the launches
  of their scope off the host.

``FITTED`` holds the three constants fitted on the published runs marked ``fitted`` in
``benchmarks/published_runs.json`` (``benchmarks/fit_step_time.py``); ``tests/test_step_time.py`` checks
them and every published row. Launch side: standard library only.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cache

from dsv3_recipes.plan import calibration, memory
from dsv3_recipes.plan.calibration import CaseTiming, PartTiming, StandIn
from dsv3_recipes.recipe import hardware
from dsv3_recipes.recipe.layout import Stage
from dsv3_recipes.recipe.resolve import Resolved

BF16_BYTES = 2
# Share of a link's rate that NCCL's ring collectives (DP, TP, PP transfers) reach: assumed, not fitted.
COLLECTIVE_EFFICIENCY = 0.8
# Share of the MoE block's launches that TE's moe_router and moe_preprocess graph scopes each capture
# (router scores and top-k; the permute bookkeeping): assumed, not fitted.
ROUTER_LAUNCH_SHARE = 0.2


@dataclass(frozen=True)
class Constants:
    """The step-time model's fitted constants."""

    ep_efficiency_nvlink: float  # share of the NVLink rate the EP all-to-all reaches
    ep_efficiency_network: float  # share of the scale-out NIC's rate it reaches beyond the NVLink domain
    host_s_per_launch: float  # host time the GPU waits for, per kernel launch outside CUDA graphs


# benchmarks/results/step_time_fit/2026-12-06-h200-clamped.json (benchmarks/fit_step_time.py): both EP
# efficiencies and the host time are fitted within their physical bounds; all three end on a bound (both
# links at 1.0, host at 0), which says that the measured compute leaves the fitted runs no time for them.
FITTED = Constants(ep_efficiency_nvlink=1.0, ep_efficiency_network=1.0, host_s_per_launch=0.0)


@dataclass(frozen=True)
class StepTime:
    """A step's predicted time by named part; the parts sum to ``step_time_s``."""

    parts: dict[str, float]
    slowest_pp_rank: int
    rank_microbatch_s: tuple[float, ...]  # each pipeline rank's time per micro-batch
    case: str  # the measured stand-in the layers' costs come from, and how
    calibration: str  # where and when it was measured

    @property
    def step_time_s(self) -> float:
        return sum(self.parts.values())


@dataclass(frozen=True)
class _Layer:
    """A layer's cost per micro-batch on the recipe's GPU: compute (forward+backward and a recomputed
    forward) and the kernel launches left on the host."""

    compute_s: float
    launches: float


class _Costs:
    """Per-micro-batch costs of the recipe's layer kinds on its GPU, from its measured stand-in."""

    def __init__(self, r: Resolved, stand: StandIn, case: CaseTiming, measured: hardware.Gpu):
        self.r, self.stand, self.measured = r, stand, measured
        self.memory_ratio = measured.hbm_tb_s / r.gpu.hbm_tb_s  # a memory-bound second here, there
        scope = set(r.cuda_graph_scope)
        self.on_host = 0.0 if "full_iteration" in scope else 1.0
        block = self._seconds(case.moe_block, token_scale=1.0)  # its routed copies are the rank's
        block_as_token_linear = self._seconds(case.moe_block)

        def beside_block(part: PartTiming) -> tuple[float, float]:  # the token-linear rest, and the block
            rest = zip(self._seconds(part), block_as_token_linear, block, strict=True)
            return tuple(x - b + whole for x, b, whole in rest)  # type: ignore[return-value]

        attention_launches = case.moe_layer.kernels - case.moe_block.kernels
        dense_launches = case.dense_layer.kernels
        dense_launches -= attention_launches if "attn" in scope else 0
        dense_launches -= case.dense_layer.kernels - attention_launches if "mlp" in scope else 0
        moe_launches = case.moe_layer.kernels
        moe_launches -= attention_launches if "attn" in scope else 0
        moe_launches -= case.moe_block.kernels if "moe" in scope else 0
        moe_launches -= (
            case.moe_block.kernels * ROUTER_LAUNCH_SHARE * len(scope & {"moe_router", "moe_preprocess"})
        )
        self.dense = self._layer(self._seconds(case.dense_layer), case.dense_layer, dense_launches)
        self.moe = self._layer(beside_block(case.moe_layer), case.moe_layer, moe_launches)
        self.embedding = self._layer(self._seconds(case.embedding), case.embedding, case.embedding.kernels)
        self.head = self._layer(self._seconds(case.head), case.head, case.head.kernels)
        mtp = case.mtp or case.moe_layer  # a stand-in always measures MTP; the fallback uses a layer
        self.mtp = self._layer(beside_block(mtp), mtp, mtp.kernels)

    def _seconds(self, part: PartTiming, token_scale: float | None = None) -> tuple[float, float]:
        """(forward+backward, forward) of ``part`` on the recipe's GPU and micro-batch: its kernel time
        by the GPUs' rates and the tokens (``token_scale``: the stand-in's, for a token-linear part), the
        time it waited for the host as measured (its launches are the rank's whatever the tokens); the
        forward alone in the same proportion."""
        scale = self.stand.token_scale if token_scale is None else token_scale
        fp8 = self.r.fp8_recipe is not None
        peak = (lambda g: g.peak_fp8_tflops) if fp8 else (lambda g: g.peak_bf16_tflops)
        gpu, measured = self.r.gpu, self.measured
        factor = (
            part.gemm_share * peak(measured) / peak(gpu)
            + part.attention_share * measured.peak_bf16_tflops / gpu.peak_bf16_tflops
            + (1 - part.gemm_share - part.attention_share) * self.memory_ratio
        )
        forward_backward = part.on_gpu_s * factor * scale + part.host_wait_s
        ratio = forward_backward / part.forward_backward_s if part.forward_backward_s else factor * scale
        return forward_backward, part.forward_s * ratio

    def _layer(self, seconds: tuple[float, float], part: PartTiming, launches: float) -> _Layer:
        """``launches``: those of ``part`` the recipe's CUDA graphs leave on the host. The measured wait for
        the host is spread over the part's launches, so the captured ones take their share of it along."""
        left_on_host = max(0.0, launches) * self.on_host
        captured_wait = part.host_wait_s * (1 - left_on_host / part.kernels) if part.kernels > 0 else 0.0
        forward_backward, forward = seconds
        forward -= captured_wait * forward / forward_backward if forward_backward else 0.0
        forward_backward -= captured_wait
        recompute = forward if self.stand.full_recompute else 0.0
        return _Layer(compute_s=forward_backward + recompute, launches=left_on_host)


@cache
def _destinations(
    experts: int, topk: int, groups: int, group_topk: int, ranks: int, domain: int
) -> tuple[float, float]:
    """Where DeepEP/HybridEP send one token of EP rank 0, on average under balanced routing: (other ranks
    of its NVLink domain that hold one of its experts, remote domains that do); each is sent one copy.

    ``experts / ranks`` experts lie on each rank in order, ``domain`` ranks per NVLink domain. With
    group-limited routing (DeepSeek-V3: 8 groups, 4 chosen) the token picks ``group_topk`` groups and
    ``topk / group_topk`` experts in each (the sum of a group's top ``topk / group_topk`` scores chose
    it); without it, ``topk`` of all experts. Balanced routing makes every such choice equally likely."""
    grouped = groups > 0 and group_topk > 0 and experts % groups == 0 and topk % group_topk == 0
    per_rank, size = experts // ranks, experts // groups if grouped else experts
    chosen = list(itertools.combinations(range(experts // size), group_topk if grouped else 1))
    per_group = topk // len(chosen[0])

    def hit(lo: int, hi: int) -> float:  # probability that an expert in [lo, hi) is one of the token's
        miss = 0.0
        for picked in chosen:
            p = 1.0
            for g in picked:
                inside = max(0, min(hi, (g + 1) * size) - max(lo, g * size))
                p *= math.comb(size - inside, per_group) / math.comb(size, per_group)
            miss += p
        return 1 - miss / len(chosen)

    near = sum(hit(r * per_rank, (r + 1) * per_rank) for r in range(1, min(domain, ranks)))
    far = sum(hit(d * per_rank, min(d + domain, ranks) * per_rank) for d in range(domain, ranks, domain))
    return near, far


def _moe_recomputed(r: Resolved) -> bool:
    """The MoE layer's forward, dispatch and combine included, runs again in the backward."""
    return r.recompute_granularity == "full" or "moe" in r.recompute_modules


def _ep_comm_s(r: Resolved, constants: Constants) -> float:
    """One MoE layer's all-to-alls for one micro-batch, before any overlap."""
    s, m, gpu = r.sizes, r.recipe.model, r.gpu
    if s.ep == 1:
        return 0.0
    tokens = m.seq_length * r.recipe.train.micro_batch_size / s.cp / s.tp
    token_bytes = m.hidden_size * BF16_BYTES * s.etp
    in_domain = max(1, min(s.ep, gpu.nvlink_domain_gpus // s.etp))  # EP peers in the NVLink domain
    if r.dispatcher == "flex":
        near, far = _destinations(
            m.num_moe_experts,
            m.moe_router_topk,
            m.moe_router_num_groups,
            m.moe_router_group_topk,
            s.ep,
            in_domain,
        )
    else:  # one copy per routed expert: top-k spread over the EP ranks
        near = m.moe_router_topk * (in_domain - 1) / s.ep
        far = m.moe_router_topk * (s.ep - in_domain) / s.ep
    seconds = (
        tokens
        * token_bytes
        * (
            near / (gpu.nvlink_gb_s * 1e9 * constants.ep_efficiency_nvlink)
            + far / (gpu.network_gb_s * 1e9 * constants.ep_efficiency_network)
        )
    )
    return (6 if _moe_recomputed(r) else 4) * seconds


def _tp_comm_s(r: Resolved) -> float:
    """One layer's sequence-parallel all-gathers and reduce-scatters for one micro-batch (NVLink)."""
    s, m = r.sizes, r.recipe.model
    if s.tp == 1:
        return 0.0
    volume = m.seq_length * r.recipe.train.micro_batch_size / s.cp * m.hidden_size * BF16_BYTES
    return 8 * volume * (s.tp - 1) / s.tp / (r.gpu.nvlink_gb_s * 1e9 * COLLECTIVE_EFFICIENCY)


def _link_bytes_per_s(r: Resolved, span_gpus: int) -> float:
    """A collective's rate over ranks spread across ``span_gpus`` consecutive GPUs."""
    link = r.gpu.nvlink_gb_s if span_gpus <= r.gpu.nvlink_domain_gpus else r.gpu.network_gb_s
    return link * 1e9 * COLLECTIVE_EFFICIENCY


def _ring_s(volume: float, ranks: int, bytes_per_s: float) -> float:
    return volume * (ranks - 1) / ranks / bytes_per_s if ranks > 1 else 0.0


@dataclass(frozen=True)
class _Rank:
    """One pipeline rank's time per micro-batch, by part."""

    compute_s: float
    ep_s: float
    tp_s: float
    host_s: float

    @property
    def total_s(self) -> float:
        return self.compute_s + self.ep_s + self.tp_s + self.host_s


def _rank(r: Resolved, costs: _Costs, chunks: list[Stage], constants: Constants) -> _Rank:
    first_moe = r.recipe.model.first_k_dense_replace
    ep_layer, tp_layer = _ep_comm_s(r, constants), _tp_comm_s(r)
    layers: list[_Layer] = []
    ep = tp = 0.0
    for stage in chunks:
        moe = [costs.moe if d >= first_moe else None for d in stage.decoder_ids] + [
            costs.mtp
        ] * stage.mtp_layers
        for layer in moe:
            tp += tp_layer
            if layer is None:
                layers.append(costs.dense)
                continue
            layers.append(layer)
            ep += max(0.0, ep_layer - layer.compute_s) if r.ep_overlap else ep_layer
        layers += [costs.embedding] * ("embedding" in stage.layers) + [costs.head] * ("loss" in stage.layers)
    compute = sum(layer.compute_s for layer in layers)
    launches = sum(layer.launches for layer in layers)
    return _Rank(compute, ep, tp, launches * constants.host_s_per_launch)


def _data_parallel_s(r: Resolved, weights: memory.RankWeights, rank: _Rank) -> float:
    """Exposed gradient reduce-scatter and parameter all-gather of one rank's weights."""
    s, o, mp, co = r.sizes, r.recipe.optimizer, r.recipe.mixed_precision, r.recipe.comm_overlap
    span = s.world // s.pp  # both rank grids put PP outermost: a DP group spans the GPUs of one stage
    rate = _link_bytes_per_s(r, span)
    dense_shards, expert_shards = s.dense_optimizer_shards, s.expert_dp
    grad_bytes = 4 if mp.grad_reduce_in_fp32 or not mp.bf16 else BF16_BYTES
    reduce = _ring_s(grad_bytes * weights.dense, dense_shards, rate)
    reduce += _ring_s(grad_bytes * weights.expert, expert_shards, rate)
    gather = 0.0
    if o.use_distributed_optimizer:
        param_bytes = 1 if mp.fp8_param_gather else BF16_BYTES
        gather = _ring_s(param_bytes * weights.dense, dense_shards, rate)
        gather += _ring_s(param_bytes * weights.expert, expert_shards, rate)
    backward, forward = 2 / 3 * rank.compute_s, 1 / 3 * rank.compute_s
    exposed_reduce = max(0.0, reduce - backward) if co.overlap_grad_reduce else reduce
    exposed_gather = max(0.0, gather - forward) if co.overlap_param_gather else gather
    return exposed_reduce + exposed_gather


def _optimizer_s(
    r: Resolved, cal: calibration.Calibration, costs: _Costs, case: CaseTiming, weights: memory.RankWeights
) -> float:
    """The step after the last backward over the rank's optimizer shard, scaled by memory bandwidth: as
    the case's stand-in measured it per parameter (gradient finalization, the distributed optimizer with
    the recipe's FP8 parameters, zeroing), else Adam and the gradient norm per parameter."""
    s, o = r.sizes, r.recipe.optimizer
    shards = (s.dense_optimizer_shards, s.expert_dp) if o.use_distributed_optimizer else (1, 1)
    sharded = weights.dense / shards[0] + weights.expert / shards[1]
    if case.step is not None:
        seconds = sharded * case.step.after_backward_s_per_param
    else:
        states = (
            "fp32/bf16/bf16"
            if o.use_precision_aware_optimizer and o.exp_avg_dtype == "bf16"
            else "fp32/fp32/fp32"
        )
        seconds = sharded * cal.optimizer.adam_s_per_param[states]
        seconds += (weights.dense + weights.expert) * cal.optimizer.grad_norm_s_per_param
    return seconds * costs.memory_ratio


def _ddp_wrapper_s(r: Resolved, costs: _Costs, case: CaseTiming, weights: memory.RankWeights) -> float:
    """Per micro-batch, what Megatron's DDP wrapper and the recipe's FP8 parameters add to the passes,
    as the case's stand-in measured it per parameter: the gradient hooks accumulate into the fp32 buffers
    (a kernel per parameter; apex's gradient-accumulation fusion does it in the weight-gradient GEMM
    instead) and FP8 parameters skip the weights' cast."""
    if case.step is None or r.recipe.model.gradient_accumulation_fusion:
        return 0.0
    return (weights.dense + weights.expert) * case.step.wrapper_s_per_param * costs.memory_ratio


def step_time(
    r: Resolved, cal: calibration.Calibration | None = None, constants: Constants = FITTED
) -> StepTime:
    """The recipe's step time by part, from the calibration's stand-in of its ranks."""
    cal = cal or calibration.load()
    stand = calibration.stand_in(r)
    case, how = cal.case_for(stand)
    costs = _Costs(r, stand, case, hardware.gpu(cal.gpu))
    s, recipe = r.sizes, r.recipe
    ranks = [_rank(r, costs, r.chunks_of(p), constants) for p in range(s.pp)]
    slowest = max(range(s.pp), key=lambda p: ranks[p].total_s)
    worst = ranks[slowest]
    # The 1F1B schedule without interleaving sends activations and receives gradients across each stage
    # boundary in the open; the interleaved one overlaps them with compute (Megatron's overlap_p2p_comm).
    p2p = 0.0
    if s.pp > 1 and s.vpp == 1:
        m = recipe.model
        boundary = m.seq_length * recipe.train.micro_batch_size / s.cp / (s.tp if s.sequence_parallel else 1)
        p2p = 2 * boundary * m.hidden_size * BF16_BYTES / _link_bytes_per_s(r, s.world)
    weights = memory.rank_weights(recipe, s, r.chunks_of(slowest))
    micro = s.num_microbatches
    parts = {
        "compute": micro * worst.compute_s,
        "ep_dispatch_combine": micro * worst.ep_s,
        "tp_collectives": micro * worst.tp_s,
        "pp_p2p": micro * p2p,
        "pp_bubble": (s.pp - 1) / s.vpp * (worst.total_s + p2p),
        "dp_grad_param_sync": _data_parallel_s(r, weights, worst),
        "ddp_wrapper": micro * _ddp_wrapper_s(r, costs, case, weights),
        "optimizer": _optimizer_s(r, cal, costs, case, weights),
        "host": micro * worst.host_s,
    }
    return StepTime(
        parts=parts,
        slowest_pp_rank=slowest,
        rank_microbatch_s=tuple(rank.total_s + p2p for rank in ranks),
        case=how,
        calibration=f"{calibration.CALIBRATION_FILE}: {cal.machine}, {cal.date}",
    )
