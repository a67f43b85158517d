"""MLPerf Training DeepSeek-V3 671B rules as code (seed 002; mlperf-logging's training 6.1.0 ruleset).

``check(recipe)`` runs in ``launch.preflight`` for every recipe with ``mlperf.enabled`` and refuses,
before anything is submitted, what the benchmark or the job would reject: GBS below 15360 outside
proxy mode, a learning rate off the GBS formula, a data directory without the C4 train or validation
prefixes, a tokenizer that is not Llama 3.1's, a starting checkpoint of another architecture, a resume
with nothing to resume. The data, tokenizer and checkpoint paths must be visible on the launch machine
(a Slurm login node mounts the cluster file system).

Launch side: standard library only (PyYAML, a NeMo-Run dependency, for Megatron-Bridge checkpoints).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from array import array

from dsv3_recipes.recipe import Recipe, RecipeError

BENCHMARK = "deepseekv3_671b"  # mlperf-logging's name (mllog.constants.DEEPSEEKV3_671B)
RULESET = "6.1.0"  # the mlperf-logging ruleset the logs are checked against
MIN_GLOBAL_BATCH_SIZE = 15360  # seed 002: GBS < 15360 not allowed
REFERENCE_GLOBAL_BATCH_SIZE = 16384
REFERENCE_LEARNING_RATE = 0.000024  # seed 002: at GBS 16384
LEARNING_RATE_DECIMALS = 9  # seed 002: rounded to the 9th decimal place
WARMUP_STEPS = 4  # seed 002
LR_SCHEDULE_STEPS = 12000  # seed 002: LR scheduler's maximum number of steps
MIN_LEARNING_RATE = 1e-8  # seed 002
TARGET_LOG_PPL = 3.60  # seed 002: validation loss target
EVAL_SAMPLES = 1024  # seed 002: the first 1,024 validation sequences
SEQ_LENGTH = 4096  # seed 002
MOE_AUX_LOSS_COEFF = 0.01  # ruleset 6.1.0 closed_deepseekv3_671b.yaml
# ruleset 6.1.0 closed_deepseekv3_671b.yaml, in the recipe's OptimizerConfig names.
ADAMW = {"adam_beta1": 0.9, "adam_beta2": 0.95, "adam_eps": 1e-8, "weight_decay": 0.1, "clip_grad": 1.0}
TOKENIZER_VOCAB = 128000  # seed 002: Llama 3.1 8B tokenizer, vocab 128,000 (plus 256 special tokens)
TRAIN_PREFIX = re.compile(r"c4-train\.en_\d+_text_document")  # seed 002 "Preprocessed data download"
VALIDATION_PREFIX = "c4-validation-91205-samples.en_text_document"  # seed 002
PROXY_LOG_KEY = "dsv3_proxy_mode"  # logged by proxy runs only: their results are not benchmark results
IDX_HEADER = b"MMIDIDX\x00\x00"  # Megatron-Core indexed dataset (.idx) magic
CHECKPOINT_ARCH_FIELDS = {  # recipe ModelConfig field -> (HF config.json key, Bridge run_config key)
    "num_layers": ("num_hidden_layers", "num_layers"),
    "hidden_size": ("hidden_size", "hidden_size"),
    "num_attention_heads": ("num_attention_heads", "num_attention_heads"),
    "num_moe_experts": ("n_routed_experts", "num_moe_experts"),
    "moe_ffn_hidden_size": ("moe_intermediate_size", "moe_ffn_hidden_size"),
    "kv_lora_rank": ("kv_lora_rank", "kv_lora_rank"),
}


def base_learning_rate(global_batch_size: int) -> float:
    """``opt_base_learning_rate = 0.000024 * sqrt(GBS / 16384)``, rounded to 9 decimals (seed 002)."""
    scaled = REFERENCE_LEARNING_RATE * math.sqrt(global_batch_size / REFERENCE_GLOBAL_BATCH_SIZE)
    return round(scaled, LEARNING_RATE_DECIMALS)


def first_eval_step(global_batch_size: int) -> int:
    """The step of the first evaluation: ruleset 6.1.0 expects it at ``floor(42 + 24576 / GBS)``."""
    return 42 + 24576 // global_batch_size


def start_eval_step(recipe: Recipe) -> int:
    """Where evaluation starts for this recipe: the ruleset's step, or the proxy's own."""
    explicit = recipe.mlperf.start_eval_step
    return explicit if explicit is not None else first_eval_step(recipe.train.global_batch_size)


def check(recipe: Recipe) -> None:
    """Refuse a recipe the benchmark rules or the data on this machine would reject."""
    _check_optimizer_and_schedule(recipe)
    _check_evaluation(recipe)
    if not recipe.mlperf.proxy:
        _check_benchmark_scale(recipe)
    if not recipe.dataset.mock:
        _check_data(recipe)
    if recipe.tokenizer.tokenizer_type == "HuggingFaceTokenizer":
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
    _require("scheduler.lr_decay_iters", s.lr_decay_iters, LR_SCHEDULE_STEPS, "LR schedule length")
    _require("mlperf.max_steps", recipe.mlperf.max_steps, LR_SCHEDULE_STEPS, "LR schedule length")
    _require("train.train_samples", recipe.train.train_samples, None, "the schedule counts steps")
    _require("model.seq_length", m.seq_length, SEQ_LENGTH, "context length")
    _require("model.moe_aux_loss_coeff", m.moe_aux_loss_coeff, MOE_AUX_LOSS_COEFF, "ruleset value")
    _require(
        "model.moe_router_force_load_balancing", m.moe_router_force_load_balancing, False, "real routing"
    )
    if not o.lr > 0:
        raise RecipeError("optimizer.lr", f"must be > 0, got {o.lr}")


def _check_evaluation(recipe: Recipe) -> None:
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
    step = t.micro_batch_size * recipe.data_parallel_size
    if per_batch % step:
        raise RecipeError(
            "mlperf.eval_samples",
            f"{ml.eval_samples} sequences in {t.eval_iters} batch(es) of {per_batch} do not split over "
            f"micro-batch {t.micro_batch_size} x data-parallel {recipe.data_parallel_size}",
        )
    first = start_eval_step(recipe)
    if first < 1 or (t.train_iters is not None and t.train_iters < first):
        raise RecipeError(
            "train.train_iters", f"{t.train_iters} ends before the first evaluation at step {first}"
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
    if abs(recipe.optimizer.lr - lr) > 10**-LEARNING_RATE_DECIMALS / 2:
        raise RecipeError(
            "optimizer.lr",
            f"{recipe.optimizer.lr} breaks the rule 0.000024 * sqrt(GBS / 16384) for GBS {gbs}: "
            f"set optimizer.lr={lr}",
        )
    ml = recipe.mlperf
    _require("mlperf.eval_samples", ml.eval_samples, EVAL_SAMPLES, "first 1,024 validation sequences")
    _require("mlperf.target_log_ppl", ml.target_log_ppl, TARGET_LOG_PPL, "quality target")
    if ml.start_eval_step is not None:
        _require("mlperf.start_eval_step", ml.start_eval_step, first_eval_step(gbs), "ruleset 6.1.0")
    _require("dataset.mock", recipe.dataset.mock, False, "C4 train and validation data")
    if recipe.checkpoint.pretrained_checkpoint is None:
        raise RecipeError(
            "checkpoint.pretrained_checkpoint",
            "the benchmark starts from the converted MLPerf checkpoint: set it (MODEL_CKPT)",
        )
    d = recipe.dataset
    for prefix in train_prefixes(d.data_paths):
        if not TRAIN_PREFIX.fullmatch(os.path.basename(prefix)):
            raise RecipeError(
                "dataset.data_paths", f"{prefix}: MLPerf trains on c4-train.en_<n>_text_document shards"
            )
    if [os.path.basename(p) for p in d.validation_paths] != [VALIDATION_PREFIX]:
        raise RecipeError(
            "dataset.validation_paths", f"must be exactly one prefix ending in {VALIDATION_PREFIX}"
        )


def _check_data(recipe: Recipe) -> None:
    d = recipe.dataset
    train = train_prefixes(d.data_paths)
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


def idx_token_count(idx_path: str) -> int:
    """Tokens in a Megatron-Core indexed dataset, read from its .idx header and sequence lengths."""
    with open(idx_path, "rb") as f:
        if f.read(len(IDX_HEADER)) != IDX_HEADER:
            raise RecipeError("dataset", f"{idx_path} is not a Megatron-Core .idx file")
        f.read(8 + 1)  # version, dtype code
        (sequence_count,) = struct.unpack("<Q", f.read(8))
        f.read(8)  # document count
        lengths = array("i")
        lengths.frombytes(f.read(4 * sequence_count))
    return sum(lengths)


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
        check_architecture(recipe, c.pretrained_checkpoint)
    if c.load is not None and latest_iteration(c.load) is None:
        raise RecipeError("checkpoint.load", f"{c.load} holds no checkpoint to resume (RESUME=1)")
    if c.save is not None and c.load is None and latest_iteration(c.save) is not None:
        raise RecipeError(
            "checkpoint.save",
            f"{c.save} already holds iteration {latest_iteration(c.save)}: resume it (RESUME=1) "
            "or save to an empty CHECKPOINT_DIR",
        )


def latest_iteration(directory: str) -> str | None:
    """The iteration recorded in a Megatron checkpoint directory's tracker file, if any."""
    tracker = os.path.join(directory, "latest_checkpointed_iteration.txt")
    if not os.path.isfile(tracker):
        return None
    with open(tracker) as f:
        return f.read().strip()


def check_architecture(recipe: Recipe, directory: str) -> None:
    """A Hugging Face DeepSeek-V3 checkpoint or a Megatron checkpoint of this recipe's model."""
    where = "checkpoint.pretrained_checkpoint"
    hf_config = os.path.join(directory, "config.json")
    if os.path.isfile(hf_config):
        with open(hf_config) as f:
            config = json.load(f)
        if config.get("model_type") != "deepseek_v3":
            raise RecipeError(where, f"{directory} is a {config.get('model_type')!r} model, not deepseek_v3")
        _compare_architecture(
            recipe, directory, {f: config.get(k) for f, (k, _) in CHECKPOINT_ARCH_FIELDS.items()}
        )
        return
    iteration = latest_iteration(directory)
    if iteration is None:
        raise RecipeError(
            where,
            f"{directory} is neither a Megatron checkpoint (latest_checkpointed_iteration.txt) nor a "
            "Hugging Face DeepSeek-V3 checkpoint (config.json)",
        )
    step_dir = os.path.join(directory, "release" if iteration == "release" else f"iter_{int(iteration):07d}")
    run_config = os.path.join(step_dir, "run_config.yaml")
    if os.path.isfile(run_config):
        import yaml

        with open(run_config) as f:
            model = yaml.safe_load(f).get("model", {})
        _compare_architecture(
            recipe, directory, {f: model.get(k) for f, (_, k) in CHECKPOINT_ARCH_FIELDS.items()}
        )
    elif not os.path.isfile(os.path.join(step_dir, "metadata.json")):
        raise RecipeError(where, f"{step_dir} has neither run_config.yaml nor a distributed checkpoint")


def _compare_architecture(recipe: Recipe, directory: str, found: dict[str, object]) -> None:
    for name, value in found.items():
        expected = getattr(recipe.model, name)
        if value != expected:
            raise RecipeError(
                "checkpoint.pretrained_checkpoint",
                f"{directory} has {name}={value}, the recipe's model has {expected}: another architecture",
            )


def train_prefixes(data_paths: list[str]) -> list[str]:
    """The prefixes of a Megatron ``--data-path`` list: ``[p, ...]`` or ``[weight, p, weight, p, ...]``."""
    weighted = len(data_paths) % 2 == 0 and all(_is_number(w) for w in data_paths[::2])
    return list(data_paths[1::2] if weighted else data_paths)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
