"""TorchTitan's DSV3 BF16 benchmark (seed 003) expressed in Megatron terms, with its launch knobs.

TorchTitan shards data over ``DATA_PARALLEL_SHARD_DEGREE`` ranks, pipelines over
``PIPELINE_PARALLEL_DEGREE`` stages and feeds ``LOCAL_BATCH_SIZE`` sequences per data-parallel rank
per step in pipeline micro-batches of one. The Megatron equivalent: DP = GPUs / PP, GBS =
LOCAL_BATCH_SIZE x DP, MBS = 1. Full activation checkpointing, AdamW lr 2.2e-4, 100 warmup steps
and a cosine decay over the last 80% of the steps come from its TOML (seed 003, "Configuration Files").
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import nemo_run as run

from dsv3_recipes import hardware
from dsv3_recipes.recipe import RecipeError
from dsv3_recipes.recipes.common import dsv3_671b

# Seed 003's defaults per GPU type: JOB_TOTAL_GPUS (the tables) and DATA_PARALLEL_SHARD_DEGREE.
DEFAULT_GPUS = {"h100": 512, "b200": 256, "gb200": 256}
DEFAULT_DP_SHARD = {"h100": 64, "b200": 32, "gb200": 32}
KNOBS = (
    "GPU_TYPE",
    "JOB_TOTAL_GPUS",
    "GPUS_PER_NODE",
    "DATA_PARALLEL_SHARD_DEGREE",
    "EXPERT_PARALLEL_DEGREE",
    "PIPELINE_PARALLEL_DEGREE",
    "TRAINING_STEPS",
    "LOCAL_BATCH_SIZE",
    "SEQ_LEN",
    "DATASET_PATH",
    "ENABLE_PROFILE",
)


def balanced_layout(num_layers: int, stages: int) -> str:
    """Embedding and loss each weigh about one layer, as in TorchTitan's default pipeline split."""
    per_stage, extra = divmod(num_layers + 2, stages)
    sizes = [per_stage + (1 if i < extra else 0) for i in range(stages)]
    sizes[0] -= 1  # embedding
    sizes[-1] -= 1  # loss
    return "|".join(
        ("E" if i == 0 else "") + f"t*{n}" + ("L" if i == stages - 1 else "") for i, n in enumerate(sizes)
    )


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise RecipeError(name, f"expected an integer, got {raw!r}") from None


def torchtitan_bf16(name: str, gpu_type: str, env: Mapping[str, str] | None = None) -> run.Partial:
    """Seed 003's benchmark for one GPU type; the seed's environment variables override its defaults."""
    env = os.environ if env is None else env
    if env.get("GPU_TYPE", gpu_type) != gpu_type:
        raise RecipeError("GPU_TYPE", f"{env['GPU_TYPE']!r} conflicts with recipe {name} ({gpu_type})")
    gpus = _int(env, "JOB_TOTAL_GPUS", DEFAULT_GPUS[gpu_type])
    gpus_per_node = _int(env, "GPUS_PER_NODE", hardware.gpu(gpu_type).gpus_per_node)
    pp = _int(env, "PIPELINE_PARALLEL_DEGREE", 8)
    dp_shard = _int(
        env,
        "DATA_PARALLEL_SHARD_DEGREE",
        gpus // pp if "JOB_TOTAL_GPUS" in env else DEFAULT_DP_SHARD[gpu_type],
    )
    if gpus % gpus_per_node:
        raise RecipeError("JOB_TOTAL_GPUS", f"{gpus} is not a multiple of GPUS_PER_NODE={gpus_per_node}")
    if dp_shard * pp != gpus:
        raise RecipeError(
            "DATA_PARALLEL_SHARD_DEGREE",
            f"{dp_shard} x PIPELINE_PARALLEL_DEGREE {pp} must equal JOB_TOTAL_GPUS {gpus} (TP is 1)",
        )
    local_batch = _int(env, "LOCAL_BATCH_SIZE", 16)

    task = dsv3_671b(name, gpu_type=gpu_type, num_nodes=gpus // gpus_per_node, gpus_per_node=gpus_per_node)
    r = task.recipe
    m = r.model
    m.tensor_model_parallel_size = 1  # seed 003
    m.pipeline_model_parallel_size = pp  # seed 003
    m.pipeline_model_parallel_layout = balanced_layout(m.num_layers, pp)
    m.expert_model_parallel_size = _int(env, "EXPERT_PARALLEL_DEGREE", 32)  # seed 003
    m.seq_length = _int(env, "SEQ_LEN", 4096)  # seed 003
    m.mtp_num_layers = None  # TorchTitan's DeepSeek-V3 has no MTP module
    m.recompute_granularity = "full"  # seed 003: activation checkpointing mode "full"
    m.recompute_method = "uniform"
    m.recompute_num_layers = 1

    r.train.micro_batch_size = 1  # TorchTitan's pipeline micro-batch
    r.train.global_batch_size = local_batch * dp_shard  # seed 003: LOCAL_BATCH_SIZE per DP rank
    steps = _int(env, "TRAINING_STEPS", 200)  # seed 003
    r.train.train_iters = steps

    r.optimizer.lr = 2.2e-4  # seed 003: AdamW lr=2.2e-4
    r.optimizer.min_lr = 0.0  # TorchTitan's default lr_min
    warmup = min(100, steps)  # seed 003: warmup_steps=100
    r.scheduler.lr_warmup_iters = warmup
    r.scheduler.lr_decay_style = "WSD"  # seed 003: decay_ratio=0.8, cosine
    r.scheduler.lr_wsd_decay_style = "cosine"
    r.scheduler.lr_wsd_decay_iters = min(round(0.8 * steps), steps - warmup)  # TorchTitan clamps the same way

    r.mixed_precision.bf16 = True  # seed 003: BF16 only
    r.dataset.mock = False  # seed 003 trains on C4: give DATASET_PATH (a Megatron .bin/.idx prefix)
    if env.get("DATASET_PATH"):
        r.dataset.data_paths = [env["DATASET_PATH"]]
    r.tokenizer.tokenizer_type = "HuggingFaceTokenizer"
    r.tokenizer.tokenizer_model = "deepseek-ai/DeepSeek-V3.1-Base"  # seed 003's tokenizer
    r.logger.log_interval = 10  # seed 003: log_freq=10
    if env.get("ENABLE_PROFILE", "").lower() in ("1", "true", "yes"):
        r.profiling.use_pytorch_profiler = True  # seed 003: ENABLE_PROFILE
    return task


def torchtitan_bf16_from_env(env: Mapping[str, str] | None = None) -> run.Partial:
    """``GPU_TYPE=h100 JOB_TOTAL_GPUS=512 dsv3 pretrain --factory torchtitan_bf16``, as seed 003 launches."""
    env = os.environ if env is None else env
    gpu_type = env.get("GPU_TYPE")
    if gpu_type not in DEFAULT_GPUS:
        raise RecipeError("GPU_TYPE", f"got {gpu_type!r}; allowed: {', '.join(DEFAULT_GPUS)}")
    return torchtitan_bf16(f"{gpu_type}_bf16_torchtitan", gpu_type, env)
