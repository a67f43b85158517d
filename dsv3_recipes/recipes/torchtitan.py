"""TorchTitan's DSV3 BF16 benchmark ([titan-dsv3]) in Megatron terms, with its launch knobs.

How TorchTitan's parallelism maps. TorchTitan's device mesh is dp_replicate x dp_shard x CP x TP x PP
and must cover the world exactly (ParallelDims). The benchmark's launch ([titan-launch]) passes only
``--parallelism.data_parallel_shard_degree``, the expert and the pipeline degree, so replicate, TP and
CP stay 1 and JOB_TOTAL_GPUS must equal DATA_PARALLEL_SHARD_DEGREE x PIPELINE_PARALLEL_DEGREE; any
other combination (the README's "custom parallelism" example among them: 32 x 4 = 128 of 512 GPUs)
is one TorchTitan refuses at start-up, and so do we, saying what to set. Each FSDP dp-shard rank
trains LOCAL_BATCH_SIZE sequences per step and holds 1/dp_shard of its pipeline stage's parameters,
gradients and optimizer state. Megatron's equivalent is data parallelism over the same ranks,
DP = dp_shard, with the distributed optimizer sharding gradients and optimizer state over DP (the
parameters themselves stay whole on each rank of a stage, which the planner counts): GBS =
LOCAL_BATCH_SIZE x DP, MBS = 1 (TorchTitan's pipeline micro-batch). Expert parallelism takes its
ranks from the dp-shard ranks in both, so EXPERT_PARALLEL_DEGREE must divide DATA_PARALLEL_SHARD_DEGREE.

Full activation checkpointing, AdamW lr 2.2e-4, 100 warmup steps and a cosine decay over the last
80% of the steps come from its TOML ([titan-dsv3], "Configuration Files"). The environment knobs are
read by ``torchtitan_bf16_from_env`` (the ``torchtitan_bf16`` recipe) only; the fixed recipes
``h100_bf16_512gpu``, ``b200_bf16_256gpu`` and ``gb200_bf16_256gpu`` are the README's tables.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping

import fiddle as fdl

from dsv3_recipes.recipe import hardware
from dsv3_recipes.recipe.schema import RecipeError
from dsv3_recipes.recipes.common import dsv3_671b, registered

# [titan-dsv3]'s defaults per GPU type: JOB_TOTAL_GPUS (the tables) and DATA_PARALLEL_SHARD_DEGREE.
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
    "LLMB_INSTALL",
    "LOG_RANK",
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


def dataset_paths(path: str) -> list[str]:
    """DATASET_PATH as Megatron ``--data-path`` prefixes: a prefix, or a directory of .bin/.idx files."""
    if not os.path.isdir(path):
        return [path]
    prefixes = sorted(idx[: -len(".idx")] for idx in glob.glob(os.path.join(path, "*.idx")))
    if not prefixes:
        raise RecipeError(
            "DATASET_PATH",
            f"{path} holds no Megatron .bin/.idx files: TorchTitan reads raw C4 JSON there; tokenize it "
            "with `dsv3 preprocess` and point DATASET_PATH at the output prefix or its directory",
        )
    return prefixes


def torchtitan_bf16(name: str, gpu_type: str, env: Mapping[str, str] | None = None) -> fdl.Partial:
    """[titan-dsv3]'s benchmark for one GPU type; ``env`` holds its launch knobs (none: the tables)."""
    env = env or {}
    if env.get("GPU_TYPE", gpu_type).lower() != gpu_type:
        raise RecipeError("GPU_TYPE", f"{env['GPU_TYPE']!r} conflicts with recipe {name} ({gpu_type})")
    gpus = _int(env, "JOB_TOTAL_GPUS", DEFAULT_GPUS[gpu_type])
    gpus_per_node = _int(env, "GPUS_PER_NODE", hardware.gpu(gpu_type).gpus_per_node)
    pp = _int(env, "PIPELINE_PARALLEL_DEGREE", 8)  # [titan-dsv3]
    dp_shard = _int(env, "DATA_PARALLEL_SHARD_DEGREE", DEFAULT_DP_SHARD[gpu_type])  # [titan-dsv3]
    ep = _int(env, "EXPERT_PARALLEL_DEGREE", 32)  # [titan-dsv3]
    for knob, value in (
        ("JOB_TOTAL_GPUS", gpus),
        ("GPUS_PER_NODE", gpus_per_node),
        ("PIPELINE_PARALLEL_DEGREE", pp),
        ("DATA_PARALLEL_SHARD_DEGREE", dp_shard),
        ("EXPERT_PARALLEL_DEGREE", ep),
    ):
        if value < 1:
            raise RecipeError(knob, f"must be >= 1, got {value}")
    if gpus % gpus_per_node:
        raise RecipeError("JOB_TOTAL_GPUS", f"{gpus} is not a multiple of GPUS_PER_NODE={gpus_per_node}")
    if dp_shard * pp != gpus:
        fits = f"DATA_PARALLEL_SHARD_DEGREE={gpus // pp}" if gpus % pp == 0 else "a multiple of the PP degree"
        raise RecipeError(
            "DATA_PARALLEL_SHARD_DEGREE",
            f"{dp_shard} x PIPELINE_PARALLEL_DEGREE {pp} must equal JOB_TOTAL_GPUS {gpus}: the launch "
            f"leaves TorchTitan's replicate, TP and CP degrees at 1, so dp_shard x PP is the whole world "
            f"and TorchTitan would refuse this mesh; set {fits}",
        )
    if dp_shard % ep:
        raise RecipeError(
            "EXPERT_PARALLEL_DEGREE",
            f"{ep} does not divide DATA_PARALLEL_SHARD_DEGREE {dp_shard}: TorchTitan takes the "
            "expert-parallel ranks from the dp-shard ranks",
        )
    local_batch = _int(env, "LOCAL_BATCH_SIZE", 16)  # [titan-dsv3]
    # [titan-launch] defaults LOG_RANK to 448 (H100) or 224 (B200, GB200): the first rank of the last
    # pipeline stage, which holds the loss. [titan-dsv3]'s README says 448 for B200 too, outside its
    # 256 GPUs; the launch script's value is the one that runs.
    log_rank = _int(env, "LOG_RANK", gpus - gpus // pp)

    task = dsv3_671b(name, gpu_type=gpu_type, num_nodes=gpus // gpus_per_node, gpus_per_node=gpus_per_node)
    r = task.recipe
    m = r.model
    m.tensor_model_parallel_size = 1  # [titan-launch]: no TP degree passed
    m.pipeline_model_parallel_size = pp  # [titan-dsv3]: PIPELINE_PARALLEL_DEGREE
    m.pipeline_model_parallel_layout = balanced_layout(m.num_layers, pp)  # TorchTitan's even split
    m.expert_model_parallel_size = ep  # [titan-dsv3]: EXPERT_PARALLEL_DEGREE
    m.seq_length = _int(env, "SEQ_LEN", 4096)  # [titan-dsv3]
    m.mtp_num_layers = None  # TorchTitan's DeepSeek-V3 has no MTP module
    m.moe_router_force_load_balancing = True  # [titan-launch]: --training.debug_moe_force_load_balance
    # [titan-dsv3]: activation checkpointing mode "full", every layer.
    m.recompute_granularity = "full"
    m.recompute_method = "uniform"
    m.recompute_num_layers = 1

    r.train.micro_batch_size = 1  # TorchTitan's pipeline micro-batch
    r.train.global_batch_size = local_batch * dp_shard  # [titan-dsv3]: LOCAL_BATCH_SIZE per DP rank
    steps = _int(env, "TRAINING_STEPS", 200)  # [titan-dsv3]
    r.train.train_iters = steps  # [titan-dsv3]: TRAINING_STEPS

    r.optimizer.lr = 2.2e-4  # [titan-dsv3]: AdamW lr=2.2e-4
    r.optimizer.min_lr = 0.0  # TorchTitan's default lr_min
    warmup = min(100, steps)  # [titan-dsv3]: warmup_steps=100
    r.scheduler.lr_warmup_iters = warmup  # [titan-dsv3]
    # [titan-dsv3]: decay_ratio=0.8, cosine: warm up, hold, then a cosine over the last 80% of the steps.
    r.scheduler.lr_decay_style = "WSD"
    r.scheduler.lr_wsd_decay_style = "cosine"
    r.scheduler.lr_wsd_decay_iters = min(round(0.8 * steps), steps - warmup)  # TorchTitan clamps the same way

    r.mixed_precision.bf16 = True  # [titan-dsv3]: BF16 only
    r.dataset.mock = False  # [titan-dsv3] trains on C4: give DATASET_PATH (Megatron .bin/.idx)
    default_dataset = os.path.join(env["LLMB_INSTALL"], "datasets", "c4") if env.get("LLMB_INSTALL") else ""
    dataset = env.get("DATASET_PATH") or default_dataset  # [titan-dsv3]: default $LLMB_INSTALL/datasets/c4
    if dataset:
        r.dataset.data_paths = dataset_paths(dataset)  # [titan-dsv3]: DATASET_PATH
    # [titan-dsv3]: the DeepSeek-V3.1-Base tokenizer from the hub.
    r.tokenizer.tokenizer_type = "HuggingFaceTokenizer"
    r.tokenizer.tokenizer_model = "deepseek-ai/DeepSeek-V3.1-Base"
    r.logger.log_interval = 10  # [titan-dsv3]: log_freq=10
    r.logger.log_rank = log_rank  # [titan-dsv3]: LOG_RANK
    if env.get("ENABLE_PROFILE", "").lower() in ("1", "true", "yes"):
        r.profiling.use_pytorch_profiler = True  # [titan-dsv3]: ENABLE_PROFILE
    return task


@registered("torchtitan_bf16")
def torchtitan_bf16_from_env(env: Mapping[str, str] | None = None) -> fdl.Partial:
    """``GPU_TYPE=h100 JOB_TOTAL_GPUS=512 dsv3 pretrain -f torchtitan_bf16``, as [titan-dsv3] launches."""
    env = os.environ if env is None else env
    gpu_type = env.get("GPU_TYPE", "").lower()
    if gpu_type not in DEFAULT_GPUS:
        raise RecipeError("GPU_TYPE", f"got {env.get('GPU_TYPE')!r}; allowed: {', '.join(DEFAULT_GPUS)}")
    return torchtitan_bf16(f"{gpu_type}_bf16_torchtitan", gpu_type, env)
