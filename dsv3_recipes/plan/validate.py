"""One validation for every door: the CLI, a notebook's ``run.run``, the MLPerf scripts and the train
entry on each GPU rank all run ``validate(recipe)``.

A recipe is checked in two layers. Each section checks its own fields when it is built
(``recipe.Section``: types, finite numbers, ranges, rules between its own fields), so ``fdl.build``
of a bad section already fails naming the field. ``validate`` checks what spans sections: the
schedule against the run length, the weights against the cluster, precision and recompute against
the GPU and Megatron-Core, the pipeline layout and every parallel divisibility, the metrics rank,
and the MLPerf rules. It re-runs the section checks first, so a recipe edited after it was built is
checked as well. What only a launch needs (data and tokenizer paths, files, checkpoints) is
``plan.check_launch``.

Callers: ``build`` (``launch.recipe_of``: ``dsv3 show``/``plan``/``pretrain`` and the MLPerf scripts,
which go through the CLI), ``plan.plan``, ``recipes.common.PretrainTask.clone`` (every task NeMo-Run
adds to an experiment, ``run.run`` included) and ``train.entry.pretrain``. A transform of a recipe
(``--shrink``) calls ``validate(recipe)`` on its output, or ``build(task.recipe)`` on its task.

Launch side: standard library and fiddle only.
"""

from __future__ import annotations

import fiddle as fdl

from dsv3_recipes.mlperf import rules as mlperf_rules
from dsv3_recipes.plan import flops
from dsv3_recipes.recipe import hardware
from dsv3_recipes.recipe.hardware import Gpu
from dsv3_recipes.recipe.layout import pipeline_stages
from dsv3_recipes.recipe.parallel import ParallelSizes, parallel_sizes
from dsv3_recipes.recipe.schema import Recipe, RecipeError, check_types

RECOMPUTE_MODULES = ("core_attn", "moe_act", "layernorm", "mla_up_proj", "mlp", "moe", "shared_experts")
GIB = 1024**3


def build(config: fdl.Buildable) -> Recipe:
    """``fdl.build`` a ``run.Config[Recipe]`` and validate it; errors carry only the field's message."""
    try:
        recipe = fdl.build(config)
    except RecipeError as e:  # fiddle appends its build context to the message: keep ours
        raise RecipeError(e.path, e.problem) from None
    validate(recipe)
    return recipe


def validate(recipe: Recipe) -> ParallelSizes:
    """Refuse a recipe no cluster could run, naming the field; returns its parallel group sizes."""
    check_types(recipe)
    for section in recipe.sections():
        section.check_fields()
    recipe.check()
    check_schedule(recipe)
    gpu = hardware.gpu(recipe.launch.gpu_type)
    check_weights_fit_cluster(recipe, gpu)
    check_precision(recipe, gpu)
    check_recompute(recipe)
    check_moe_overlap_and_graphs(recipe)
    stages = pipeline_stages(recipe.model)
    sizes = parallel_sizes(recipe, vpp=max(st.vp_rank for st in stages) + 1)
    check_log_rank(recipe, sizes)
    if recipe.mlperf.enabled:
        mlperf_rules.check_rules(recipe)
    return sizes


def check_schedule(recipe: Recipe) -> None:
    """The scheduler counts what the run counts: iterations, or samples (``train.train_samples``)."""
    t, s = recipe.train, recipe.scheduler
    if t.train_samples is not None:
        unit, other = (
            "samples (train.train_samples)",
            (
                ("lr_warmup_iters", s.lr_warmup_iters != 0),
                ("lr_decay_iters", s.lr_decay_iters is not None),
                ("lr_wsd_decay_iters", s.lr_wsd_decay_iters is not None),
            ),
        )
    else:
        unit, other = (
            "iterations (train.train_iters)",
            (
                ("lr_warmup_samples", s.lr_warmup_samples != 0),
                ("lr_decay_samples", s.lr_decay_samples is not None),
            ),
        )
    for name, is_set in other:
        if is_set:
            raise RecipeError(
                f"scheduler.{name}",
                f"{getattr(s, name)}, but this run counts {unit}: Megatron would ignore or refuse it; "
                "give the schedule in the same unit",
            )
    if s.lr_decay_style == "WSD" and s.lr_wsd_decay_iters is not None:
        decay = s.lr_decay_iters if s.lr_decay_iters is not None else t.train_iters
        if decay is not None and s.lr_wsd_decay_iters > decay:
            raise RecipeError(
                "scheduler.lr_wsd_decay_iters",
                f"{s.lr_wsd_decay_iters} is longer than the {decay}-step schedule",
            )


def check_weights_fit_cluster(recipe: Recipe, gpu: Gpu) -> None:
    """Before any layout is built: the BF16 weights alone must fit in all the GPUs together."""
    m = recipe.model
    dense = sum(w.numel for w in flops.decoder_layer_weights(m, 0)) if m.first_k_dense_replace else 0
    moe_layers = m.num_layers - m.first_k_dense_replace
    moe = sum(w.numel for w in flops.decoder_layer_weights(m, m.num_layers - 1)) if moe_layers else 0
    layers = dense * m.first_k_dense_replace + moe * moe_layers
    embedding = sum(w.numel for w in flops.embedding_weights(m) + flops.loss_weights(m))
    total_gib = 2 * (layers + embedding) / GIB
    cluster_gib = recipe.launch.num_gpus * gpu.memory_gib
    if total_gib > cluster_gib:
        field = "model.num_layers" if layers >= embedding else "model.vocab_size"
        raise RecipeError(
            field,
            f"{m.num_layers} layers of width {m.hidden_size} and a vocabulary of {m.vocab_size}: "
            f"{(layers + embedding) / 1e9:,.1f}B parameters need {total_gib:,.0f} GiB in BF16, "
            f"more than the {cluster_gib:,.0f} GiB of {recipe.launch.num_gpus} x {gpu.name}",
        )


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
        if m.recompute_num_layers is None:
            raise RecipeError("model.recompute_num_layers", "full recompute needs a layer count >= 1")
        return
    if m.recompute_granularity != "selective":
        return
    modules = m.recompute_modules or ["core_attn"]  # what Megatron-Core fills in for an empty list
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


def check_log_rank(recipe: Recipe, sizes: ParallelSizes) -> None:
    """The metrics rank must hold the loss: a rank of the last pipeline stage (Megatron puts PP outermost)."""
    rank = recipe.logger.log_rank
    if rank is None:
        return
    first_of_last_stage = sizes.world - sizes.world // sizes.pp
    if not first_of_last_stage <= rank < sizes.world:
        raise RecipeError(
            "logger.log_rank",
            f"{rank} does not hold the loss: with {sizes.world} GPUs and PP={sizes.pp} the last pipeline "
            f"stage is ranks {first_of_last_stage}..{sizes.world - 1}",
        )
