"""Megatron and Hugging Face checkpoints on the launch side: what they hold, read before submission.

``check_architecture`` compares a starting checkpoint's sizes (its HF ``config.json`` or the
``run_config.yaml`` Megatron-Bridge saves in every iteration directory) with the recipe's model.
``check_resume`` refuses a resume that Megatron's ``OptimizerParamScheduler`` would kill at start-up:
its ``load_state_dict`` asserts that the learning-rate and weight-decay schedule saved in the
checkpoint equals the recipe's, unless ``scheduler.override_opt_param_scheduler`` (the recipe's
schedule wins: extend a run) or ``scheduler.use_checkpoint_opt_param_scheduler`` (the saved one wins)
is set. The saved schedule is recomputed from the saved config the way Bridge's
``ConfigContainer._calculate_scheduler_steps`` computes it.

Standard library plus PyYAML (a NeMo-Run dependency).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from dsv3_recipes.recipe.schema import CheckpointConfig, Recipe, RecipeError

TRACKER = "latest_checkpointed_iteration.txt"
# recipe ModelConfig field -> (HF config.json key, Bridge run_config.yaml model key)
ARCHITECTURE_FIELDS = {
    "num_layers": ("num_hidden_layers", "num_layers"),
    "hidden_size": ("hidden_size", "hidden_size"),
    "num_attention_heads": ("num_attention_heads", "num_attention_heads"),
    "num_moe_experts": ("n_routed_experts", "num_moe_experts"),
    "moe_ffn_hidden_size": ("moe_intermediate_size", "moe_ffn_hidden_size"),
    "kv_lora_rank": ("kv_lora_rank", "kv_lora_rank"),
    "vocab_size": ("vocab_size", "vocab_size"),  # the embedding and output layer rows
}


def latest_iteration(directory: str) -> str | None:
    """The iteration recorded in a Megatron checkpoint directory's tracker file, if any."""
    tracker = os.path.join(directory, TRACKER)
    if not os.path.isfile(tracker):
        return None
    with open(tracker) as f:
        return f.read().strip()


def iteration_dir(directory: str, iteration: str) -> str:
    return os.path.join(directory, "release" if iteration == "release" else f"iter_{int(iteration):07d}")


def saved_config(directory: str) -> dict | None:
    """The ConfigContainer Megatron-Bridge saved with the latest checkpoint (``run_config.yaml``)."""
    iteration = latest_iteration(directory)
    path = iteration_dir(directory, iteration) + "/run_config.yaml" if iteration else ""
    if not os.path.isfile(path):
        return None
    import yaml

    with open(path) as f:
        return yaml.safe_load(f) or {}


def check_architecture(
    recipe: Recipe, directory: str, where: str = "checkpoint.pretrained_checkpoint"
) -> None:
    """A Hugging Face DeepSeek-V3 checkpoint or a Megatron checkpoint of this recipe's model."""
    hf_config = os.path.join(directory, "config.json")
    if os.path.isfile(hf_config):
        with open(hf_config) as f:
            config = json.load(f)
        if config.get("model_type") != "deepseek_v3":
            raise RecipeError(where, f"{directory} is a {config.get('model_type')!r} model, not deepseek_v3")
        _compare(recipe, where, directory, {f: config.get(k) for f, (k, _) in ARCHITECTURE_FIELDS.items()})
        return
    iteration = latest_iteration(directory)
    if iteration is None:
        raise RecipeError(
            where,
            f"{directory} is neither a Megatron checkpoint ({TRACKER}) nor a "
            "Hugging Face DeepSeek-V3 checkpoint (config.json)",
        )
    config = saved_config(directory)
    if config is not None:
        model = config.get("model", {})
        _compare(recipe, where, directory, {f: model.get(k) for f, (_, k) in ARCHITECTURE_FIELDS.items()})
    elif not os.path.isfile(os.path.join(iteration_dir(directory, iteration), "metadata.json")):
        step_dir = iteration_dir(directory, iteration)
        raise RecipeError(where, f"{step_dir} has neither run_config.yaml nor a distributed checkpoint")


def _compare(recipe: Recipe, where: str, directory: str, found: Mapping[str, object]) -> None:
    for name, value in found.items():
        expected = getattr(recipe.model, name)
        if value is not None and value != expected:
            what = "embedding size" if name == "vocab_size" else "architecture"
            raise RecipeError(
                where, f"{directory} has {name}={value}, the recipe's model has {expected}: another {what}"
            )


def schedule(train: Mapping, scheduler: Mapping, optimizer: Mapping) -> dict[str, object]:
    """What Megatron's OptimizerParamScheduler compares on resume, by the names its assertion uses."""
    gbs = train["global_batch_size"]
    if train.get("train_samples") is not None:
        decay = scheduler.get("lr_decay_samples") or train["train_samples"]
        warmup = scheduler.get("lr_warmup_samples") or 0
        weight_decay_steps = train["train_samples"]
    else:
        decay = (scheduler.get("lr_decay_iters") or train["train_iters"]) * gbs
        warmup = (scheduler.get("lr_warmup_iters") or 0) * gbs
        weight_decay_steps = train["train_iters"] * gbs
    return {  # YAML may hold 3e-05 as a string (PyYAML needs a dot in a float): compare numbers
        "learning rate": float(optimizer["lr"]),
        "minimum learning rate": float(optimizer["min_lr"]),
        "warmup iterations": min(warmup, decay - 1),  # Bridge caps warmup below the decay length
        "total number of iterations": decay,
        "learning rate decay style": scheduler["lr_decay_style"],
        "total number of weight decay iterations": weight_decay_steps,
    }


# Which recipe field sets each compared value, to name in the refusal.
SCHEDULE_FIELDS = {
    "learning rate": "optimizer.lr",
    "minimum learning rate": "optimizer.min_lr",
    "warmup iterations": "scheduler.lr_warmup_iters",
    "total number of iterations": "scheduler.lr_decay_iters",
    "learning rate decay style": "scheduler.lr_decay_style",
    "total number of weight decay iterations": "train.train_iters",
}


def check_resume(recipe: Recipe) -> None:
    """Refuse a resume whose schedule differs from its checkpoint's, unless a switch says which wins."""
    c, s = recipe.checkpoint, recipe.scheduler
    if (
        c.load is None
        or not c.load_optim
        or s.override_opt_param_scheduler
        or s.use_checkpoint_opt_param_scheduler
    ):
        return  # no resume, no scheduler state loaded, or Megatron is told which schedule to keep
    saved = saved_config(c.load)
    if saved is None:
        return
    try:
        before = schedule(saved["train"], saved["scheduler"], saved["optimizer"])
    except (KeyError, TypeError, ValueError):
        return  # not a Bridge ConfigContainer we can read: Megatron checks it itself
    t, o = recipe.train, recipe.optimizer
    now = schedule(
        {
            "global_batch_size": t.global_batch_size,
            "train_iters": t.train_iters,
            "train_samples": t.train_samples,
        },
        {
            "lr_decay_iters": s.lr_decay_iters,
            "lr_warmup_iters": s.lr_warmup_iters,
            "lr_decay_samples": s.lr_decay_samples,
            "lr_warmup_samples": s.lr_warmup_samples,
            "lr_decay_style": s.lr_decay_style,
        },
        {"lr": o.lr, "min_lr": o.min_lr},
    )
    for name, value in now.items():
        if value != before[name]:
            field = SCHEDULE_FIELDS[name]
            if name.startswith("total number of weight") and t.train_samples is not None:
                field = "train.train_samples"
            raise RecipeError(
                field,
                f"resuming {c.load} (iteration {latest_iteration(c.load)}): this recipe gives Megatron's "
                f"scheduler {name} = {value}, the checkpoint saved {before[name]}, and Megatron stops on "
                "the difference; set scheduler.override_opt_param_scheduler=True to run this recipe's "
                "schedule (e.g. to extend the run) or scheduler.use_checkpoint_opt_param_scheduler=True "
                "to keep the saved one",
            )


def loads_its_save(c: CheckpointConfig) -> bool:
    """``checkpoint.load`` is ``checkpoint.save``: a resume-if-present run of its own checkpoints."""
    return bool(c.load and c.save) and os.path.normpath(c.load) == os.path.normpath(c.save)


def check_exists(recipe: Recipe) -> None:
    """A checkpoint to start from must exist where this process runs (the launch with a local
    executor, the train-side preflight on the node). ``checkpoint.load`` equal to ``checkpoint.save``
    is a resume-if-present run: its directory appears with the first save."""
    c = recipe.checkpoint
    for field, path in (
        ("checkpoint.load", c.load),
        ("checkpoint.pretrained_checkpoint", c.pretrained_checkpoint),
    ):
        if path is None or (field == "checkpoint.load" and loads_its_save(c)):
            continue
        if not os.path.isdir(path):
            raise RecipeError(
                field, f"{path} is not a directory{'' if os.path.exists(path) else ' (it does not exist)'}"
            )


def check_save(recipe: Recipe, overwrite: bool = False) -> None:
    """A new run does not save over another run's checkpoint: ``checkpoint.save`` holding one is
    refused unless the run resumes it (``checkpoint.load`` the same directory) or ``--overwrite``."""
    c = recipe.checkpoint
    if overwrite or c.save is None:
        return
    held = latest_iteration(c.save)
    if held is not None and not loads_its_save(c):
        raise RecipeError(
            "checkpoint.save",
            f"{c.save} already holds a checkpoint (iteration {held}) that this run would write over: resume "
            f"it (checkpoint.load={c.save}), save elsewhere, or pass --overwrite",
        )
