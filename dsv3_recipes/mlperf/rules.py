"""MLPerf Training DeepSeek-V3 671B rules as code ([mlperf-dsv3], [mlperf-ref], [mlperf-rules]).

``check_rules(recipe)`` is part of ``validate.validate`` for every recipe with ``mlperf.enabled``, so
``dsv3 plan`` and every launch refuse what the benchmark would reject: GBS below 15360 outside proxy
mode, a learning rate off the GBS formula, a schedule, optimizer or evaluation other than the
benchmark's, a proxy run of the benchmark's own model. ``check_files(recipe)`` runs before a launch:
a data directory without the C4 train or validation prefixes, a tokenizer that is not Llama 3.1's,
a starting checkpoint of another architecture or embedding size, a resume with nothing to resume.
The data, tokenizer and checkpoint paths must be visible on the launch machine (a Slurm login node
mounts the cluster file system). ``check`` is both.

Launch side: standard library and fiddle only.
"""

from __future__ import annotations

import json
import os
import re
import struct

import fiddle as fdl

from dsv3_recipes.recipe import checkpoints, models
from dsv3_recipes.recipe.resolve import Resolved, resolve
from dsv3_recipes.recipe.schema import MLPerfConfig, Recipe, RecipeError, blend_prefixes

BENCHMARK = "deepseekv3_671b"  # mlperf-logging's name (mllog.constants.DEEPSEEKV3_671B)
RULESET = "6.1.0"  # the mlperf-logging ruleset the logs are checked against
MIN_GLOBAL_BATCH_SIZE = 15360  # [mlperf-dsv3]: GBS < 15360 not allowed
WARMUP_STEPS = 4  # [mlperf-dsv3]
LR_SCHEDULE_STEPS = 12000  # [mlperf-dsv3]: LR scheduler's maximum number of steps
# Megatron's lr_decay_iters is the step the cosine ends at, warmup included: the reference passes
# LR_DECAY_STEPS=11996 ([mlperf-ref] config_GB300_64x4x256xtp1pp4cp1.sh) and the ruleset checks
# opt_learning_rate_decay_steps == 12000 - warmup ([mlperf-rules]).
LR_DECAY_ITERS = LR_SCHEDULE_STEPS - WARMUP_STEPS
MIN_LEARNING_RATE = 1e-8  # [mlperf-dsv3]
TARGET_LOG_PPL = 3.60  # [mlperf-dsv3]: validation loss target
EVAL_SAMPLES = 1024  # [mlperf-dsv3]: 1,024 validation sequences per evaluation
SEQ_LENGTH = 4096  # [mlperf-dsv3]
MOE_AUX_LOSS_COEFF = 0.01  # [mlperf-rules] closed_deepseekv3_671b.yaml
# [mlperf-rules] closed_deepseekv3_671b.yaml, in the recipe's OptimizerConfig names.
ADAMW = {"adam_beta1": 0.9, "adam_beta2": 0.95, "adam_eps": 1e-8, "weight_decay": 0.1, "clip_grad": 1.0}
TOKENIZER_VOCAB = 128000  # [mlperf-dsv3]: Llama 3.1 8B tokenizer, vocab 128,000 (plus 256 special tokens)
TRAIN_PREFIX = re.compile(r"c4-train\.en_\d+_text_document")  # [mlperf-dsv3] "Preprocessed data download"
VALIDATION_PREFIX = "c4-validation-91205-samples.en_text_document"  # [mlperf-dsv3]
PROXY_LOG_KEY = "dsv3_proxy_mode"  # logged by proxy runs only: their results are not benchmark results
IDX_HEADER = b"MMIDIDX\x00\x00"  # Megatron-Core indexed dataset (.idx) magic
IDX_PREAMBLE = len(IDX_HEADER) + 8 + 1 + 8 + 8  # magic, version, dtype code, sequence and document counts
base_learning_rate = MLPerfConfig.base_learning_rate  # the GBS rule, kept on the config that derives the LR


def first_eval_step(global_batch_size: int) -> int:
    """The step of the first evaluation: ruleset 6.1.0 expects it at ``floor(42 + 24576 / GBS)``."""
    return 42 + 24576 // global_batch_size


def start_eval_step(recipe: Recipe) -> int:
    """Where evaluation starts for this recipe: the ruleset's step, or the proxy's own."""
    explicit = recipe.mlperf.start_eval_step
    return explicit if explicit is not None else first_eval_step(recipe.train.global_batch_size)


def check(recipe: Recipe) -> None:
    """Refuse a recipe the benchmark rules or the data on this machine would reject."""
    check_rules(resolve(recipe))
    check_files(recipe)


def check_rules(resolved: Resolved) -> None:
    """The benchmark's values: what no MLPerf run may change, wherever it runs."""
    recipe = resolved.recipe
    _check_optimizer_and_schedule(recipe)
    _check_evaluation(recipe, resolved.sizes.dp)
    if recipe.mlperf.proxy:
        _check_proxy_model(recipe)
    else:
        _check_benchmark_scale(recipe)


def check_files(recipe: Recipe) -> None:
    """The benchmark's data, tokenizer and checkpoints, read on this machine before a launch."""
    if not recipe.mlperf.proxy:
        if recipe.checkpoint.pretrained_checkpoint is None:
            raise RecipeError(
                "checkpoint.pretrained_checkpoint",
                "the benchmark starts from the converted MLPerf checkpoint: set it (MODEL_CKPT)",
            )
        if len(recipe.dataset.validation_paths) != 1:
            raise RecipeError(
                "dataset.validation_paths", f"must be exactly one prefix ending in {VALIDATION_PREFIX}"
            )
    if not recipe.dataset.mock:
        _check_data(recipe)
    if recipe.tokenizer.tokenizer_type == "HuggingFaceTokenizer" and not recipe.dataset.mock:
        check_tokenizer(recipe)
    _check_checkpoints(recipe)


def _require(path: str, value: object, expected: object, why: str) -> None:
    if value != expected:
        raise RecipeError(path, f"is {value!r}; the MLPerf DSV3 rules need {expected!r} ({why})")


def _check_optimizer_and_schedule(recipe: Recipe) -> None:
    o, s, m = recipe.optimizer, recipe.scheduler, recipe.model
    _require("optimizer.optimizer", o.optimizer, "adam", "AdamW")
    for name, value in ADAMW.items():
        _require(f"optimizer.{name}", getattr(o, name), value, "AdamW hyperparameters")
    _require("optimizer.min_lr", o.min_lr, MIN_LEARNING_RATE, "minimum learning rate")
    _require("scheduler.lr_decay_style", s.lr_decay_style, "cosine", "cosine with linear warmup")
    _require("scheduler.lr_warmup_iters", s.lr_warmup_iters, WARMUP_STEPS, "warmup steps")
    _require(
        "scheduler.lr_decay_iters",
        s.lr_decay_iters,
        LR_DECAY_ITERS,
        "the cosine ends at 12,000 - warmup steps",
    )
    _require("train.train_samples", recipe.train.train_samples, None, "the schedule counts steps")
    _require("model.seq_length", m.seq_length, SEQ_LENGTH, "context length")
    _require("model.moe_aux_loss_coeff", m.moe_aux_loss_coeff, MOE_AUX_LOSS_COEFF, "ruleset value")
    _require(
        "model.moe_router_force_load_balancing", m.moe_router_force_load_balancing, False, "real routing"
    )


def _check_evaluation(recipe: Recipe, data_parallel: int) -> None:
    t, ml = recipe.train, recipe.mlperf
    _require("train.eval_interval", t.eval_interval, 1, "evaluate after every step")
    if ml.target_log_ppl > TARGET_LOG_PPL:
        raise RecipeError(
            "mlperf.target_log_ppl",
            f"{ml.target_log_ppl} is above {TARGET_LOG_PPL}, which the ruleset checks in proxy logs too",
        )
    _require("dataset.create_attention_mask", recipe.dataset.create_attention_mask, False, "causal kernels")
    if t.eval_iters < 1 or ml.eval_samples % t.eval_iters:
        raise RecipeError(
            "train.eval_iters", f"must be >= 1 and divide mlperf.eval_samples ({ml.eval_samples})"
        )
    per_batch = ml.eval_samples // t.eval_iters
    step = t.micro_batch_size * data_parallel
    if per_batch % step:
        raise RecipeError(
            "mlperf.eval_samples",
            f"{ml.eval_samples} sequences in {t.eval_iters} batch(es) of {per_batch} do not split over "
            f"micro-batch {t.micro_batch_size} x data-parallel {data_parallel}",
        )
    first = start_eval_step(recipe)
    if first < 1 or (t.train_iters is not None and t.train_iters < first):
        raise RecipeError(
            "train.train_iters", f"{t.train_iters} ends before the first evaluation at step {first}"
        )


def _check_proxy_model(recipe: Recipe) -> None:
    """Proxy mode lifts the scale rules: a run of the benchmark's own model must keep them."""
    benchmark = fdl.build(models.deepseek_v3_671b())
    if all(getattr(recipe.model, f) == getattr(benchmark, f) for f in checkpoints.ARCHITECTURE_FIELDS):
        raise RecipeError(
            "mlperf.proxy",
            "True on the benchmark's own 671B model: proxy mode lifts GBS >= 15360, the LR rule and "
            "the 1,024-sequence evaluation, so a 671B run must keep them (set mlperf.proxy=False)",
        )


def _check_benchmark_scale(recipe: Recipe) -> None:
    gbs = recipe.train.global_batch_size
    if gbs < MIN_GLOBAL_BATCH_SIZE:
        raise RecipeError(
            "train.global_batch_size",
            f"{gbs} is below the MLPerf DSV3 minimum {MIN_GLOBAL_BATCH_SIZE} "
            "(only mlperf.proxy=True runs may use a smaller batch)",
        )
    lr = base_learning_rate(gbs)
    if abs(recipe.optimizer.lr - lr) > 10**-MLPerfConfig.LEARNING_RATE_DECIMALS / 2:
        raise RecipeError(
            "optimizer.lr",
            f"{recipe.optimizer.lr} breaks the rule 0.000024 * sqrt(GBS / 16384) for GBS {gbs}: "
            f"set optimizer.lr={lr}",
        )
    ml = recipe.mlperf
    _require("mlperf.eval_samples", ml.eval_samples, EVAL_SAMPLES, "1,024 validation sequences")
    _require("mlperf.target_log_ppl", ml.target_log_ppl, TARGET_LOG_PPL, "quality target")
    if ml.start_eval_step is not None:
        _require("mlperf.start_eval_step", ml.start_eval_step, first_eval_step(gbs), "ruleset 6.1.0")
    _require("dataset.mock", recipe.dataset.mock, False, "C4 train and validation data")
    d = recipe.dataset
    for prefix in blend_prefixes(d.data_paths):
        if not TRAIN_PREFIX.fullmatch(os.path.basename(prefix)):
            raise RecipeError(
                "dataset.data_paths", f"{prefix}: MLPerf trains on c4-train.en_<n>_text_document shards"
            )
    if d.validation_paths and [os.path.basename(p) for p in d.validation_paths] != [VALIDATION_PREFIX]:
        raise RecipeError(
            "dataset.validation_paths", f"must be exactly one prefix ending in {VALIDATION_PREFIX}"
        )


def _check_data(recipe: Recipe) -> None:
    d = recipe.dataset
    train = blend_prefixes(d.data_paths)
    if not train:
        raise RecipeError("dataset.data_paths", "empty: give the c4-train .bin/.idx prefixes")
    if len(d.validation_paths) != 1:
        raise RecipeError(
            "dataset.validation_paths",
            "give exactly one validation prefix: evaluation reads its first sequences",
        )
    for section, prefixes in (("data_paths", train), ("validation_paths", d.validation_paths)):
        for prefix in prefixes:
            for ext in (".bin", ".idx"):
                if not os.path.isfile(prefix + ext):
                    raise RecipeError(f"dataset.{section}", f"{prefix}{ext} does not exist on this machine")
    needed = recipe.mlperf.eval_samples * recipe.model.seq_length + 1
    found = idx_token_count(d.validation_paths[0] + ".idx")
    if found < needed:
        raise RecipeError(
            "dataset.validation_paths",
            f"{d.validation_paths[0]} holds {found} tokens; {recipe.mlperf.eval_samples} sequences of "
            f"{recipe.model.seq_length} need {needed}",
        )


def idx_token_count(idx_path: str, where: str = "dataset.validation_paths") -> int:
    """Tokens in a Megatron-Core indexed dataset, read from its .idx header and sequence lengths."""
    with open(idx_path, "rb") as f:
        data = f.read()
    if not data.startswith(IDX_HEADER):
        raise RecipeError(where, f"{idx_path} is not a Megatron-Core .idx file")
    if len(data) < IDX_PREAMBLE:
        raise RecipeError(where, f"{idx_path} is truncated: {len(data)} bytes, shorter than its header")
    (sequence_count,) = struct.unpack_from("<Q", data, len(IDX_HEADER) + 8 + 1)
    if len(data) < IDX_PREAMBLE + 4 * sequence_count:
        raise RecipeError(
            where,
            f"{idx_path} is truncated: {len(data)} bytes cannot hold the {sequence_count} sequence lengths "
            "its header announces (rewrite it with dsv3 preprocess)",
        )
    return sum(struct.unpack_from(f"<{sequence_count}i", data, IDX_PREAMBLE))


def check_tokenizer(recipe: Recipe) -> None:
    """The tokenizer directory holds a fast tokenizer whose ids fit the model's embedding."""
    directory = recipe.tokenizer.tokenizer_model
    path = os.path.join(directory or "", "tokenizer.json")
    if not directory or not os.path.isfile(path):
        raise RecipeError(
            "tokenizer.tokenizer_model", f"{directory!r} has no tokenizer.json (expected $DATA_DIR/tokenizer)"
        )
    with open(path) as f:
        spec = json.load(f)
    vocab = spec["model"]["vocab"]
    ids = [entry["id"] for entry in spec.get("added_tokens", [])]
    ids += list(vocab.values()) if isinstance(vocab, dict) else [len(vocab) - 1]
    if not recipe.mlperf.proxy and len(vocab) != TOKENIZER_VOCAB:
        raise RecipeError(
            "tokenizer.tokenizer_model",
            f"{directory} has a vocabulary of {len(vocab)}; MLPerf DSV3 uses the Llama 3.1 8B "
            f"tokenizer ({TOKENIZER_VOCAB})",
        )
    if max(ids) >= recipe.model.vocab_size:
        raise RecipeError(
            "tokenizer.tokenizer_model",
            f"token id {max(ids)} does not fit model.vocab_size {recipe.model.vocab_size}",
        )


def _check_checkpoints(recipe: Recipe) -> None:
    c = recipe.checkpoint
    if c.pretrained_checkpoint is not None:
        checkpoints.check_architecture(recipe, c.pretrained_checkpoint)
    if c.load is not None and checkpoints.latest_iteration(c.load) is None:
        raise RecipeError("checkpoint.load", f"{c.load} holds no checkpoint to resume (RESUME=1)")
    if c.save is not None and c.load is None and checkpoints.latest_iteration(c.save) is not None:
        raise RecipeError(
            "checkpoint.save",
            f"{c.save} already holds iteration {checkpoints.latest_iteration(c.save)}: resume it (RESUME=1) "
            "or save to an empty CHECKPOINT_DIR",
        )
