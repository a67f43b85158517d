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

from dsv3_recipes.launch import safe
from dsv3_recipes.mlperf import rules as mlperf_rules
from dsv3_recipes.plan import flops
from dsv3_recipes.recipe import hardware, resolve, rules
from dsv3_recipes.recipe.hardware import Gpu
from dsv3_recipes.recipe.parallel import ParallelSizes
from dsv3_recipes.recipe.resolve import Resolved
from dsv3_recipes.recipe.schema import Recipe, RecipeError, check_types

RECOMPUTE_MODULES = ("core_attn", "moe_act", "layernorm", "mla_up_proj", "mlp", "moe", "shared_experts")
GIB = 1024**3


def recipe_types() -> dict[str, type]:
    """What a recipe config may build, by dotted name: the Recipe and the dataclasses it holds. A task
    loaded from YAML names its targets; anything else (``os.system``) is refused before it is built."""
    import dataclasses

    from dsv3_recipes.recipe import schema

    found = [t for t in vars(schema).values() if isinstance(t, type) and dataclasses.is_dataclass(t)]
    found = [t for t in found if t.__module__ == schema.__name__] + [dict, list]  # NeMo-Run's containers
    return {f"{t.__module__}.{t.__qualname__}": t for t in found}


def check_targets(value: object, where: str, allowed: dict[str, type]) -> None:
    """Every ``fdl.Buildable`` in ``value`` builds one of ``allowed``; refuse the first that does not."""
    if isinstance(value, fdl.Buildable):
        target = value.__fn_or_cls__
        dotted = f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', target)}"
        if allowed.get(dotted) is not target:
            raise RecipeError(where, f"{dotted} is not a recipe type; a task builds only {RECIPE_TYPES}")
        for key, arg in value.__arguments__.items():
            check_targets(arg, f"{where}.{key}" if where else key, allowed)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_targets(item, f"{where}[{i}]", allowed)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_targets(item, f"{where}.{key}", allowed)


RECIPE_TYPES = "dsv3_recipes.recipe.schema's dataclasses (Recipe and its sections)"


def built(config: fdl.Buildable) -> Recipe:
    """``fdl.build`` a ``run.Config[Recipe]``: each section checks its own fields; errors carry only the
    field's message. A door that goes on to ``plan`` or ``check_launch`` validates there, once. The
    config builds only recipe types (``check_targets``): fiddle calls whatever a config names."""
    if not isinstance(config, fdl.Buildable) or config.__fn_or_cls__ is not Recipe:
        raise RecipeError(
            "recipe", f"expected a run.Config of Recipe, got {type(config).__name__} {config!r:.80}"
        )
    check_targets(config, "", recipe_types())
    try:
        return fdl.build(config)
    except RecipeError as e:  # fiddle appends its build context to the message: keep ours
        raise RecipeError(e.path, e.problem) from None


def build(config: fdl.Buildable) -> Recipe:
    """``built`` and ``validate``: the recipe of a door that shows it (``dsv3 show``)."""
    recipe = built(config)
    validate(recipe)
    return recipe


def validate(recipe: Recipe) -> Resolved:
    """Refuse a recipe no cluster could run, naming the field; returns what it resolves to."""
    check_types(recipe, sections=False)  # the recipe's own fields; each section checks its own below
    check_strings(recipe)
    for section in recipe.sections():
        section.check_fields()
    recipe.check()
    check_schedule(recipe)
    gpu = hardware.gpu(recipe.launch.gpu_type)
    check_weights_fit_cluster(recipe, gpu)
    check_precision(recipe)
    check_recompute(recipe)
    rules.check_all(rules.MOE_OVERLAP_AND_GRAPHS, recipe)
    resolved = resolve.resolve(recipe)  # the layout and every parallel divisibility
    check_log_rank(recipe, resolved.sizes)
    if recipe.mlperf.enabled:
        mlperf_rules.check_rules(resolved)
    return resolved


def check_strings(recipe: Recipe) -> None:
    """What reaches a file name, a job name or a script: the name names the job directory, its log
    files and its ``<name>_config.yaml`` (no ``/`` or ``..``); a secret's value would be written in
    the script and the task's YAML, so it is refused by name in any case (``safe.is_secret``)."""
    safe.name("name", recipe.name)
    safe.env_vars(recipe.env_vars)


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


def check_precision(recipe: Recipe) -> None:
    """FP8 recipe against the GPU generation, and the optimizer dtypes Megatron accepts."""
    mp, o, m = recipe.mixed_precision, recipe.optimizer, recipe.model
    rules.MXFP8_NEEDS_BLACKWELL.check(recipe)
    rules.BLOCKWISE_GROUPED_GEMM.check(recipe)
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
    if o.fused_adam:
        check_fused_adam(recipe)


def check_fused_adam(recipe: Recipe) -> None:
    """``optimizer.fused_adam`` replaces TE FusedAdam's param-remainder kernel, which runs only where TE
    holds the fp32 master as bf16 params and int16 remainders: Adam on the precision-aware optimizer with
    fp32 main params, bf16 params (no FP8 params; delayed scaling keeps TE's master) and bf16 moments."""
    problem = rules.unmet(
        recipe,
        {
            "optimizer.optimizer": ("adam",),
            "optimizer.use_precision_aware_optimizer": (True,),
            "optimizer.main_params_dtype": ("fp32",),
            "optimizer.exp_avg_dtype": ("bf16",),
            "optimizer.exp_avg_sq_dtype": ("bf16",),
            "mixed_precision.bf16": (True,),
            "mixed_precision.fp8_param_gather": (False,),
            "mixed_precision.fp8_recipe": (None, "delayed"),  # with the others Megatron holds the master
        },
    )
    if problem:
        raise RecipeError("optimizer.fused_adam", f"is TE's param-remainder AdamW: {problem}")


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
    modules = resolve.recompute_modules(m)
    unknown = sorted(set(modules) - set(RECOMPUTE_MODULES))
    if unknown:
        raise RecipeError(
            "model.recompute_modules", f"unknown {unknown}; allowed: {', '.join(RECOMPUTE_MODULES)}"
        )
    if m.recompute_num_layers is not None:
        raise RecipeError("model.recompute_num_layers", "must be None with selective recompute")
    if "moe_act" in modules and not m.moe_grouped_gemm:
        raise RecipeError("model.recompute_modules", "moe_act needs model.moe_grouped_gemm=True")
    if "shared_experts" in modules and resolve.shared_expert_overlap(m):
        raise RecipeError(
            "model.recompute_modules", "shared_experts cannot be recomputed with moe_shared_expert_overlap"
        )
    if "moe" in modules and recipe.comm_overlap.overlap_moe_expert_parallel_comm:
        raise RecipeError(
            "model.recompute_modules", "'moe' cannot be recomputed with overlap_moe_expert_parallel_comm"
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
