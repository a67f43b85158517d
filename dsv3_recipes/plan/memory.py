"""Per-GPU memory of one pipeline rank, term by term, as Megatron-Core 0.19 + TE 2.x allocate it.

Every term is its own function so that it can be calibrated against measured peaks
(``torch.cuda.max_memory_allocated``) of proxy runs. The peak of a training step is

    allocated = weights + grads + main params + exp_avg + exp_avg_sq (+ FP8 weight cache)
                + max(in-flight activations + backward working set, optimizer-step scratch)
    total     = allocated + overhead (CUDA context, NCCL, dispatcher buffers, fragmentation)

``allocated`` is what PyTorch's caching allocator reports; ``total`` is what must fit in the GPU.
Activations are freed before the optimizer step, so the fp32 gradient copies that Megatron's
distributed optimizer makes for its step do not add to them.

Modelled precisely (from the Megatron-Core source): which weights TP splits or replicates, expert
weights over EP x ETP, the distributed optimizer's sharding over DP x CP (dense) and expert-DP
(experts), precision-aware optimizer dtypes, TE FusedAdam's 16-bit master remainders and step copies
(measured on the 1-GPU proxy: benchmarks/planner_vs_measured.md), FP8 weight storage, the grad buffer dtype,
the saved tensors of MLA and MoE layers with TP/SP/CP/ETP, selective and full recompute, and the
micro-batches in flight on each rank of the 1F1B and interleaved schedules. Approximations are
named where they are made; the ones that apply everywhere: bf16 activations, balanced expert routing
(no imbalance factor), CP splits the sequence without counting ring-attention K/V buffers,
CUDA-graph static buffers are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsv3_recipes.plan import flops
from dsv3_recipes.recipe import resolve
from dsv3_recipes.recipe.layout import Stage, stages_of_rank
from dsv3_recipes.recipe.parallel import ParallelSizes
from dsv3_recipes.recipe.schema import ModelConfig, Recipe

GIB = 2**30
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}

# --- Constants to calibrate against measured peaks -------------------------------------------------
CUDA_CONTEXT_GIB = 0.6
"""CUDA context, cuBLAS/cuDNN handles and module images: memory outside PyTorch's allocator."""
NCCL_BUFFERS_GIB = 1.0
"""NCCL communicator buffers of the DP, TP, PP, EP and embedding groups (world > 1 only)."""
FLEX_DISPATCHER_GIB = 2.0
"""DeepEP / HybridEP NVLink and RDMA buffers, allocated outside PyTorch (flex dispatcher only)."""
ALLOCATOR_FRAGMENTATION = 0.05
"""Reserved-but-unallocated share of the allocated peak with expandable segments."""
ROUTER_FP32_COPIES = {False: 3, True: 2}
"""fp32 [tokens, experts] tensors the router keeps for backward (unfused, fused top-k)."""
MXFP8_SCALE_BYTES = 2 / 32
"""One E8M0 scale per 32 values, for the rowwise and the columnwise copy of an MXFP8 tensor."""


@dataclass(frozen=True)
class MemoryTerm:
    name: str
    bytes: float
    detail: str

    @property
    def gib(self) -> float:
        return self.bytes / GIB


@dataclass(frozen=True)
class RankWeights:
    """Parameter counts held by one rank, split by how the optimizer shards them."""

    dense: float  # sharded over DP x CP
    dense_te_gemm: float  # part of ``dense`` that FP8 recipes store/cache in FP8
    expert: float  # sharded over expert-DP (all of it is TE GEMM weight)


@dataclass(frozen=True)
class RankMemory:
    """The memory estimate of one pipeline rank (every TP/EP/DP rank of it looks the same)."""

    pp_rank: int
    weights: RankWeights
    states: tuple[MemoryTerm, ...]  # weights, grads, optimizer states: allocated for the whole run
    activations: MemoryTerm
    working_set: MemoryTerm
    optimizer_step: MemoryTerm
    overhead: MemoryTerm
    in_flight: int  # model-chunk forwards whose activations are held at the peak

    @property
    def allocated_bytes(self) -> float:
        training = self.activations.bytes + self.working_set.bytes
        return sum(t.bytes for t in self.states) + max(training, self.optimizer_step.bytes)

    @property
    def total_bytes(self) -> float:
        return self.allocated_bytes + self.overhead.bytes

    @property
    def terms(self) -> tuple[MemoryTerm, ...]:
        return (*self.states, self.activations, self.working_set, self.optimizer_step, self.overhead)


# --- Weights and optimizer states -----------------------------------------------------------------


def stage_weights(model: ModelConfig, stage: Stage) -> list[flops.Weight]:
    """The weights a model chunk builds: its layers, plus embedding copies for E and MTP stages."""
    weights: list[flops.Weight] = []
    if "embedding" in stage.layers or stage.mtp_layers:
        weights += flops.embedding_weights(model)  # the MTP stage keeps its own embedding copy
    for decoder_id in stage.decoder_ids:
        weights += flops.decoder_layer_weights(model, decoder_id)
    for _ in range(stage.mtp_layers):
        weights += flops.mtp_layer_weights(model)
    if "loss" in stage.layers:
        weights += flops.loss_weights(model)
    return weights


def rank_weights(recipe: Recipe, sizes: ParallelSizes, chunks: list[Stage]) -> RankWeights:
    """Per-rank parameter counts: TP splits 'tp' weights, EP x ETP splits experts, the rest replicate."""
    dense = dense_te = expert = 0.0
    for stage in chunks:
        for w in stage_weights(recipe.model, stage):
            if w.sharding == "expert":
                expert += w.numel / (sizes.ep * sizes.etp)
                continue
            share = w.numel / sizes.tp if w.sharding == "tp" else w.numel
            dense += share
            dense_te += share if w.te_gemm else 0.0
    return RankWeights(dense=dense, dense_te_gemm=dense_te, expert=expert)


def fp8_weights_stored(recipe: Recipe) -> bool:
    """FP8 primary weights: TE GEMM weights live in FP8 (fp8_param_gather) instead of bf16."""
    return recipe.mixed_precision.fp8_recipe is not None and recipe.mixed_precision.fp8_param_gather


def weight_bytes(recipe: Recipe, weights: RankWeights) -> float:
    """Model weights. bf16 (fp32 without bf16); FP8 primary weights keep a rowwise and a columnwise
    (transposed) FP8 copy, MXFP8 adds its E8M0 scales."""
    mp = recipe.mixed_precision
    if not mp.bf16:
        return 4.0 * (weights.dense + weights.expert)
    te = weights.dense_te_gemm + weights.expert
    plain = weights.dense + weights.expert - te
    if not fp8_weights_stored(recipe):
        return 2.0 * (plain + te)
    fp8_bytes = 2.0 + (MXFP8_SCALE_BYTES if mp.fp8_recipe == "mxfp8" else 0.0)
    return 2.0 * plain + fp8_bytes * te


def fp8_weight_cache_bytes(recipe: Recipe, weights: RankWeights) -> float:
    """FP8 compute on bf16 weights: TE keeps each weight's FP8 copies (rowwise + transposed) between
    the micro-batches of a step (Megatron passes is_first_microbatch)."""
    if (
        recipe.mixed_precision.fp8_recipe is None
        or fp8_weights_stored(recipe)
        or not recipe.mixed_precision.bf16
    ):
        return 0.0
    return 2.0 * (weights.dense_te_gemm + weights.expert)


def grad_buffer_bytes_per_param(recipe: Recipe) -> float:
    """DDP's contiguous grad buffer: fp32 with grad_reduce_in_fp32 (or fp32 training), else bf16.
    Megatron's MXFP8 param all-gather reuses this buffer (reuse_grad_buf_for_mxfp8_param_ag)."""
    mp = recipe.mixed_precision
    return 4.0 if mp.grad_reduce_in_fp32 or not mp.bf16 else 2.0


def te_keeps_master_weights(recipe: Recipe) -> bool:
    """Precision-aware optimizer: TE FusedAdam holds the master weights unless an FP8 recipe other
    than delayed scaling is used with fp32 masters (then Megatron keeps fp32 copies itself)."""
    o, mp = recipe.optimizer, recipe.mixed_precision
    return o.use_precision_aware_optimizer and (
        o.main_params_dtype != "fp32" or mp.fp8_recipe in (None, "delayed")
    )


def main_param_bytes_per_param(recipe: Recipe) -> float:
    """Master weights, before optimizer sharding.

    TE-held fp32 masters of bf16 weights take 2 B/param: Megatron passes its OptimizerConfig's
    store_param_remainders (True by default, kept with TE >= 2.1; the recipe has no field for it), and
    TE FusedAdam then stores only the 16 low bits of each fp32 master (int16), the bf16 weight being
    its 16 high bits. Measured on the 1-GPU proxy on an H100: after step 1 the optimizer's
    master_param holds 6.65 GiB, the size of the bf16 weights; TE makes it at step 1's optimizer step,
    so every later step's forward and backward run beside it, and the peak, 70.36 GiB, is 1.1 GiB under
    the plan with 2 B/param and 7.8 GiB under it with 4
    (benchmarks/results/side_by_side/2026-12-07-h100-recompute-j/2026-12-07-h100-mtp.json). Runs before
    740de5b held 4 B/param from before their first step: the container passed fp8_recipe='tensorwise',
    which made Megatron keep fp32 masters itself (the last branch; benchmarks/planner_vs_measured.md).
    """
    o, mp = recipe.optimizer, recipe.mixed_precision
    if not mp.bf16:
        return 0.0  # fp32 weights are their own master copy
    if te_keeps_master_weights(recipe):
        return 2.0 if o.main_params_dtype == "fp32" else DTYPE_BYTES[o.main_params_dtype]
    return 4.0


def moment_bytes_per_param(recipe: Recipe, dtype: str) -> float:
    """One Adam moment (exp_avg or exp_avg_sq); fp32 unless the precision-aware optimizer says so."""
    return DTYPE_BYTES[dtype] if recipe.optimizer.use_precision_aware_optimizer else 4.0


def optimizer_step_bytes_per_param(recipe: Recipe) -> float:
    """fp32 copies the optimizer step makes beside the states (not alive with the activations).

    Megatron's own masters: it copies each gradient to fp32 for its step (shard_main_param.grad =
    grad.float()) unless the grad buffer is fp32 already. TE-held masters: FusedAdam reads the grad
    buffer in place (decoupled_grad) and the master remainders as they are. Either way FusedAdam copies
    to fp32 the 16-bit states its kernel does not scale itself: fp16 ones, and bf16 ones unless both
    moments are bf16 (TE 2.20's fuse_unscale). So with bf16 moments and TE-held masters the step adds
    nothing: the 1-GPU proxy's step 1, whose optimizer step makes every state, peaked at 40.1 GiB with
    33.6 GiB allocated after it, where 4 B/param of copies would have made it 46.9
    (benchmarks/results/planner_checks/2026-12-06-h100/2026-12-06-h100-proxy_mtp.log).
    """
    o, mp = recipe.optimizer, recipe.mixed_precision
    if not mp.bf16:
        return 0.0
    states = [o.exp_avg_dtype, o.exp_avg_sq_dtype]
    if te_keeps_master_weights(recipe):
        grad_copies = 0.0
        states.append(o.main_params_dtype)
    else:
        grad_copies = 0.0 if grad_buffer_bytes_per_param(recipe) == 4.0 else 4.0
    fused = o.exp_avg_dtype == o.exp_avg_sq_dtype == "bf16"
    return grad_copies + sum(4.0 for d in states if d == "fp16" or (d == "bf16" and not fused))


def optimizer_shards(recipe: Recipe, sizes: ParallelSizes) -> tuple[int, int]:
    """(dense, expert) ranks over which the distributed optimizer splits the states."""
    if not recipe.optimizer.use_distributed_optimizer:
        return 1, 1
    return sizes.dense_optimizer_shards, sizes.expert_dp


def state_terms(recipe: Recipe, sizes: ParallelSizes, w: RankWeights) -> tuple[list[MemoryTerm], float]:
    """Weights, grads and optimizer states of one rank, and its optimizer-step scratch bytes."""
    o = recipe.optimizer
    dense_shards, expert_shards = optimizer_shards(recipe, sizes)
    sharded = w.dense / dense_shards + w.expert / expert_shards
    params = f"{w.dense / 1e9:.3f}B dense + {w.expert / 1e9:.3f}B expert params"
    shard_note = f"sharded: dense /{dense_shards}, expert /{expert_shards}"
    terms = [
        MemoryTerm("weights", weight_bytes(recipe, w), params),
        MemoryTerm(
            "grad buffer",
            grad_buffer_bytes_per_param(recipe) * (w.dense + w.expert),
            f"{grad_buffer_bytes_per_param(recipe):.0f} B/param",
        ),
        MemoryTerm(
            "main params",
            main_param_bytes_per_param(recipe) * sharded,
            f"{main_param_bytes_per_param(recipe):.0f} B/param, {shard_note}",
        ),
        MemoryTerm(
            "exp_avg",
            moment_bytes_per_param(recipe, o.exp_avg_dtype) * sharded,
            f"{moment_bytes_per_param(recipe, o.exp_avg_dtype):.0f} B/param, {shard_note}",
        ),
        MemoryTerm(
            "exp_avg_sq",
            moment_bytes_per_param(recipe, o.exp_avg_sq_dtype) * sharded,
            f"{moment_bytes_per_param(recipe, o.exp_avg_sq_dtype):.0f} B/param, {shard_note}",
        ),
    ]
    cache = fp8_weight_cache_bytes(recipe, w)
    if cache:
        terms.append(MemoryTerm("fp8 weight cache", cache, "FP8 copies of bf16 weights"))
    return terms, optimizer_step_bytes_per_param(recipe) * sharded


# --- Activations -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Saved:
    """A tensor kept for backward: its bytes per micro-batch on this rank and which selective
    recompute modules free it."""

    name: str
    bytes: float
    dropped_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class Tokens:
    """Token counts on one rank for one micro-batch."""

    seq: float  # sequence positions of the micro-batch on this CP rank (x micro-batch size)
    sp: float  # positions in the sequence-parallel region (seq / TP with SP)
    routed: float  # token copies entering this rank's experts (top-k, ETP gathered)


def not_counted(recipe: Recipe) -> tuple[str, ...]:
    """Memory this recipe will use that no term counts, for the plan to say beside its total."""
    if recipe.model.cuda_graph_impl == "none":
        return ()
    return (
        "CUDA-graph private pools (static inputs, outputs and intermediates of every captured scope): "
        "proxy_1gpu launch.gpu_type=h200 with graphs of attn/moe_router/moe_preprocess held 19.8 GiB in them "
        "on an 80 GB H100 and ran out of memory, where it peaks at 70.4 GiB without graphs "
        "(benchmarks/results/side_by_side/2026-12-07-h100-overlap-graphs-f)",
    )


def tokens(recipe: Recipe, sizes: ParallelSizes) -> Tokens:
    """Balanced routing assumed: each expert rank receives its share of the top-k copies."""
    seq = recipe.model.seq_length * recipe.train.micro_batch_size / sizes.cp
    sp = seq / sizes.tp if sizes.sequence_parallel else seq
    routed = seq * recipe.model.moe_router_topk * sizes.etp / sizes.tp
    return Tokens(seq=seq, sp=sp, routed=routed)


def gemm_input_bytes(recipe: Recipe) -> float:
    """Bytes per element of a tensor saved only as a GEMM input: TE saves FP8 copies under FP8."""
    return 1.0 if recipe.mixed_precision.fp8_recipe else 2.0


def attention_saved(recipe: Recipe, sizes: ParallelSizes, tok: Tokens) -> list[Saved]:
    """MLA with TE: norms and down projections in the SP region, q/k/v and the fused attention output
    split over heads (TP). Fused (cuDNN) attention keeps only q, k, v, output and softmax stats."""
    m = recipe.model
    h, n, tp = m.hidden_size, m.num_attention_heads, sizes.tp
    q_head, gemm = m.qk_head_dim + m.qk_pos_emb_head_dim, gemm_input_bytes(recipe)
    saved = [
        Saved("attn input", 2 * tok.sp * h),
        Saved("attn norm out", 2 * tok.sp * h, ("layernorm",)),
        Saved("kv_down out", 2 * tok.sp * (m.kv_lora_rank + m.qk_pos_emb_head_dim)),
    ]
    if m.q_lora_rank is not None:
        saved.append(Saved("q_down out", 2 * tok.sp * m.q_lora_rank))
        if m.qk_layernorm:
            saved.append(Saved("q_up norm out", gemm * tok.sp * m.q_lora_rank, ("mla_up_proj",)))
    if m.qk_layernorm:
        saved.append(Saved("kv_up norm out", gemm * tok.sp * m.kv_lora_rank, ("mla_up_proj",)))
    saved += [
        Saved("query", 2 * tok.seq * n * q_head / tp, ("mla_up_proj",)),
        Saved("key", 2 * tok.seq * n * q_head / tp, ("mla_up_proj",)),
        Saved("value", 2 * tok.seq * n * m.v_head_dim / tp, ("mla_up_proj",)),
        Saved("attn out", 2 * tok.seq * n * m.v_head_dim / tp),
        Saved("softmax stats", 4 * tok.seq * n / tp, ("core_attn",)),
    ]
    if recipe.mixed_precision.fp8_recipe:
        saved.append(Saved("o_proj fp8 input", tok.seq * n * m.v_head_dim / tp))
    return saved


def dense_mlp_saved(recipe: Recipe, sizes: ParallelSizes, tok: Tokens) -> list[Saved]:
    """SwiGLU MLP with its norm fused into fc1; 'mlp' recompute keeps only the input."""
    m = recipe.model
    f, gemm = m.ffn_hidden_size / sizes.tp, gemm_input_bytes(recipe)
    return [
        Saved("mlp input", 2 * tok.sp * m.hidden_size),
        Saved("mlp norm out", gemm * tok.sp * m.hidden_size, ("mlp",)),
        Saved("mlp fc1 out", 2 * tok.seq * 2 * f, ("mlp",)),
        Saved("mlp act out", gemm * tok.seq * f, ("mlp",)),
    ]


def moe_saved(recipe: Recipe, sizes: ParallelSizes, tok: Tokens) -> list[Saved]:
    """Router, dispatched tokens through the grouped expert GEMMs, and the shared expert.

    The routing probabilities are applied inside the weighted SwiGLU, so the un-permute keeps no
    copy of the expert output; 'moe_act' recompute (with FP8 too: fc2 then saves its bf16 input,
    which the checkpoint frees) drops the activation output; 'moe' keeps only the layer input.
    """
    m = recipe.model
    h, gemm = m.hidden_size, gemm_input_bytes(recipe)
    f = m.moe_ffn_hidden_size / sizes.etp
    router = 4 * ROUTER_FP32_COPIES[m.moe_router_fusion] * tok.sp * m.num_moe_experts
    saved = [
        Saved("moe input", 2 * tok.sp * h),
        Saved("moe norm out", 2 * tok.sp * h, ("layernorm",)),
        Saved("router", router, ("moe",)),
        Saved("dispatched tokens", gemm * tok.routed * h, ("moe",)),
        Saved("expert fc1 out", 2 * tok.routed * 2 * f, ("moe",)),
        Saved("expert act out", gemm * tok.routed * f, ("moe_act", "moe")),
        Saved("routing probs", 4 * tok.routed, ("moe",)),
    ]
    shared = m.moe_shared_expert_intermediate_size / sizes.tp
    if shared:
        saved += [
            Saved("shared fc1 out", 2 * tok.seq * 2 * shared, ("shared_experts", "moe")),
            Saved("shared act out", gemm * tok.seq * shared, ("shared_experts", "moe")),
        ]
    return saved


def layer_saved(recipe: Recipe, sizes: ParallelSizes, decoder_id: int) -> list[Saved]:
    """Every tensor one decoder layer keeps for backward, before any recompute."""
    tok = tokens(recipe, sizes)
    mlp = moe_saved if flops.is_moe_layer(recipe.model, decoder_id) else dense_mlp_saved
    return attention_saved(recipe, sizes, tok) + mlp(recipe, sizes, tok)


def selective_kept(recipe: Recipe, saved: list[Saved]) -> float:
    """Bytes left after selective recompute frees the tensors of the listed modules."""
    modules = set(resolve.recompute_modules(recipe.model))
    return sum(s.bytes for s in saved if not modules.intersection(s.dropped_by))


def loss_saved(recipe: Recipe, sizes: ParallelSizes) -> list[Saved]:
    """Final norm and logits of one prediction; TE's fused cross entropy keeps bf16 logits (it writes
    the gradient in place), the unfused one an fp32 copy."""
    m, tok = recipe.model, tokens(recipe, sizes)
    fused = m.cross_entropy_loss_fusion and m.cross_entropy_fusion_impl == "te"
    logits_bytes = (2 if fused else 4) * tok.seq * flops.padded_vocab_size(m) / sizes.tp
    return [
        Saved("final norm in/out", 2 * 2 * tok.sp * m.hidden_size),
        Saved("logits", logits_bytes),
    ]


def mtp_extra_saved(recipe: Recipe, sizes: ParallelSizes) -> list[Saved]:
    """One MTP depth besides its layer and loss: embedding, enorm/hnorm outputs and the 2h concat."""
    m, tok = recipe.model, tokens(recipe, sizes)
    return [Saved("mtp embed/norms/concat", 2 * tok.sp * m.hidden_size * 5)]


def full_recompute_kept(recipe: Recipe, layer_bytes: list[float], input_bytes: float) -> float:
    """Full recompute keeps a checkpointed group's input only: 'uniform' checkpoints every group of
    recompute_num_layers layers, 'block' the first recompute_num_layers layers of the chunk."""
    m = recipe.model
    n = max(1, m.recompute_num_layers or 1)
    if m.recompute_method == "block":
        return n * input_bytes if len(layer_bytes) <= n else n * input_bytes + sum(layer_bytes[n:])
    groups = -(-len(layer_bytes) // n)
    return groups * input_bytes


def chunk_activation_bytes(recipe: Recipe, sizes: ParallelSizes, stage: Stage) -> float:
    """Activations one micro-batch leaves in a model chunk until its backward runs."""
    m = recipe.model
    tok = tokens(recipe, sizes)
    layers = [layer_saved(recipe, sizes, d) for d in stage.decoder_ids]
    layers += [
        layer_saved(recipe, sizes, m.num_layers - 1) + mtp_extra_saved(recipe, sizes)
    ] * stage.mtp_layers
    if m.recompute_granularity == "full":
        kept = full_recompute_kept(
            recipe, [sum(s.bytes for s in layer) for layer in layers], 2 * tok.sp * m.hidden_size
        )
    else:
        kept = sum(selective_kept(recipe, layer) for layer in layers)
    predictions = (1 + stage.mtp_layers) if "loss" in stage.layers else stage.mtp_layers
    kept += predictions * sum(s.bytes for s in loss_saved(recipe, sizes))
    return kept


def backward_working_set_bytes(recipe: Recipe, sizes: ParallelSizes, chunks: list[Stage]) -> float:
    """Transient memory of a backward pass: approximated by the full (recompute-free) saved tensors of
    the largest layer on the rank, which recompute rematerialises and whose gradients are alive."""
    ids = [d for stage in chunks for d in stage.decoder_ids]
    ids += [recipe.model.num_layers - 1] * sum(stage.mtp_layers for stage in chunks)
    if not ids:
        return 0.0
    return max(sum(s.bytes for s in layer_saved(recipe, sizes, d)) for d in set(ids))


def in_flight_chunks(sizes: ParallelSizes, pp_rank: int, overlap_moe_ep: bool) -> list[int]:
    """Virtual-stage index of each chunk forward whose activations are alive at the rank's peak.

    Megatron's 1F1B: rank r runs PP - r - 1 warm-up forwards, then one more forward before its first
    backward. Interleaved: (PP - r - 1) x 2 + (VPP - 1) x PP warm-up forwards (+1 with EP comm overlap),
    in the order of get_schedule_table (groups of PP micro-batches, chunk by chunk).
    """
    pp, vpp, mbs = sizes.pp, sizes.vpp, sizes.num_microbatches
    if pp == 1:
        return [0]
    if vpp == 1:
        return [0] * min(pp - pp_rank, mbs)
    warmup = (pp - pp_rank - 1) * 2 + (vpp - 1) * pp + (1 if overlap_moe_ep else 0)
    count = min(warmup + 1, mbs * vpp)
    order = [
        chunk
        for group_start in range(0, mbs, pp)
        for chunk in range(vpp)
        for _ in range(group_start, min(group_start + pp, mbs))
    ]
    return order[:count]


def activation_term(
    recipe: Recipe, sizes: ParallelSizes, chunks: list[Stage], pp_rank: int
) -> tuple[MemoryTerm, int]:
    """Activations of all micro-batches in flight on the rank, and how many chunk forwards those are."""
    per_chunk = [chunk_activation_bytes(recipe, sizes, stage) for stage in chunks]
    order = in_flight_chunks(sizes, pp_rank, recipe.comm_overlap.overlap_moe_expert_parallel_comm)
    total = sum(per_chunk[c] for c in order)
    recompute = recipe.model.recompute_granularity or "none"
    if recompute == "selective":
        recompute += f" {recipe.model.recompute_modules or ['core_attn']}"
    detail = f"{len(order)} chunk forwards in flight, recompute {recompute}"
    return MemoryTerm("activations", total, detail), len(order)


# --- Overhead and the whole rank ------------------------------------------------------------------


def overhead_bytes(recipe: Recipe, sizes: ParallelSizes, allocated: float) -> float:
    """Memory the GPU loses outside PyTorch's allocated bytes (constants above)."""
    gib = CUDA_CONTEXT_GIB + (NCCL_BUFFERS_GIB if sizes.world > 1 else 0.0)
    if recipe.model.moe_token_dispatcher_type == "flex":
        gib += FLEX_DISPATCHER_GIB
    return gib * GIB + ALLOCATOR_FRAGMENTATION * allocated


def rank_memory(recipe: Recipe, sizes: ParallelSizes, stages: list[Stage], pp_rank: int) -> RankMemory:
    """All memory terms of one pipeline rank."""
    chunks = stages_of_rank(stages, pp_rank)
    weights = rank_weights(recipe, sizes, chunks)
    states, step_bytes = state_terms(recipe, sizes, weights)
    activations, in_flight = activation_term(recipe, sizes, chunks, pp_rank)
    working = MemoryTerm(
        "backward working set",
        backward_working_set_bytes(recipe, sizes, chunks),
        "largest layer, unrecomputed",
    )
    step = MemoryTerm("optimizer step", step_bytes, "fp32 step copies; not alongside activations")
    no_overhead = MemoryTerm("overhead", 0.0, "")
    partial = RankMemory(pp_rank, weights, tuple(states), activations, working, step, no_overhead, in_flight)
    overhead = MemoryTerm(
        "overhead",
        overhead_bytes(recipe, sizes, partial.allocated_bytes),
        "CUDA context, NCCL, dispatcher buffers, allocator fragmentation",
    )
    return RankMemory(pp_rank, weights, tuple(states), activations, working, step, overhead, in_flight)


def all_ranks(recipe: Recipe, sizes: ParallelSizes, stages: list[Stage]) -> list[RankMemory]:
    return [rank_memory(recipe, sizes, stages, r) for r in range(sizes.pp)]


def most_loaded(ranks: list[RankMemory]) -> RankMemory:
    return max(ranks, key=lambda r: r.total_bytes)
