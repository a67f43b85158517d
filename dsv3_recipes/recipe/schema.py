"""The Recipe: one typed, Fiddle-configurable description of a DSV3 pretraining run.

Sections and field names mirror Megatron-Bridge's ConfigContainer (``model``, ``train``, ``optimizer``,
``scheduler``, ``dataset``, ``tokenizer``, ``checkpoint``, ``logger``, ``mixed_precision``,
``comm_overlap``, ``env_vars``) so that ``model.expert_model_parallel_size`` or ``optimizer.lr`` mean
what they mean in Megatron. ``launch`` holds what the cluster must provide (GPU type, nodes, NVL
segment, bindpcie) and ``mlperf`` the benchmark rules when a recipe runs in MLPerf mode.

Each section checks its own fields when it is built (``Section.__post_init__``: types, ranges, and
the rules between its own fields), so ``fdl.build`` of a bad recipe fails with the field's name.
The rules that span sections and the parallel layout live in ``dsv3_recipes.plan.validate``.

This module imports only the standard library: the launch side builds, overrides and validates
recipes on a login node that has no torch.
"""

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional

Dtype = Literal["fp32", "bf16", "fp16"]
GpuType = Literal["h100", "h200", "b200", "gb200", "gb300"]


# What Megatron-Bridge's apply_determinism_overrides (recipes/utils/determinism_utils.py) puts in the
# environment. The launcher must export them: TE and NCCL read them when they start, before Bridge runs.
DETERMINISTIC_ENV_VARS = {
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
    "NCCL_ALGO": "Ring",
    "NVTE_ALLOW_NONDETERMINISTIC_ALGO": "0",
}


class RecipeError(ValueError):
    """Bad recipe input. The message starts with the offending field's dotted path."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


# Sizes are int32 in Megatron's samplers and CUDA kernels: anything larger is a typo, not a model.
INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class Limit:
    """The range a numeric field must lie in; ``above``/``below`` exclude the end itself."""

    low: Optional[float] = None
    high: Optional[float] = None
    above: bool = False
    below: bool = False

    def check(self, path: str, value: float) -> None:
        too_low = self.low is not None and (value <= self.low if self.above else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.below else value > self.high)
        if too_low or too_high:
            raise RecipeError(path, f"must be {self.describe()}, got {value}")

    def describe(self) -> str:
        if self.high is None:
            return f"{'>' if self.above else '>='} {self.low}"
        return f"in {'(' if self.above else '['}{self.low}, {self.high}{')' if self.below else ']'}"


SIZE = Limit(1, INT32_MAX)  # a width, a count of layers, ranks or samples: at least one
COUNT = Limit(0, INT32_MAX)  # a count that may be zero
POSITIVE = Limit(0, above=True)
NON_NEGATIVE = Limit(0)
FRACTION = Limit(0, 1, below=True)  # dropout, Adam betas: 1 would divide by zero or drop everything


class Section:
    """A recipe section: its types, ranges (``LIMITS``) and own rules (``check``) hold once built."""

    PATH: ClassVar[str]
    LIMITS: ClassVar[dict[str, Limit]] = {}

    def __post_init__(self) -> None:
        self.check_fields()

    def check_fields(self) -> None:
        """Types, finiteness and ranges of every field, then the section's own rules."""
        check_types(self, self.PATH)
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            where = f"{self.PATH}.{f.name}"
            if isinstance(value, float) and not math.isfinite(value):
                raise RecipeError(where, f"must be a finite number, got {value}")
            if value is not None and f.name in self.LIMITS:
                self.LIMITS[f.name].check(where, value)
        self.check()

    def check(self) -> None:
        """Rules between this section's own fields."""


@dataclass
class ModelConfig(Section):
    """Architecture, parallelism and kernel choices: Megatron keeps all three on the model provider."""

    PATH: ClassVar[str] = "model"

    # Architecture: no defaults, models.py names every size once.
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    q_lora_rank: Optional[int]
    kv_lora_rank: int
    qk_head_dim: int
    qk_pos_emb_head_dim: int
    v_head_dim: int
    num_moe_experts: int
    moe_ffn_hidden_size: int
    moe_shared_expert_intermediate_size: int
    first_k_dense_replace: int  # leading dense layers; Megatron's moe_layer_freq = [0]*k + [1]*(n-k)
    moe_router_topk: int
    moe_router_num_groups: int
    moe_router_group_topk: int
    moe_router_topk_scaling_factor: float
    moe_router_score_function: Literal["sigmoid", "softmax"]
    moe_router_enable_expert_bias: bool
    moe_router_bias_update_rate: float
    moe_router_pre_softmax: bool
    moe_router_load_balancing_type: Literal["seq_aux_loss", "aux_loss", "none"]
    moe_aux_loss_coeff: float
    moe_router_dtype: Optional[Literal["fp32", "fp64"]]
    vocab_size: int
    make_vocab_size_divisible_by: int
    seq_length: int
    rotary_base: float
    rotary_scaling_factor: float
    original_max_position_embeddings: int
    mscale: float
    mscale_all_dim: float
    norm_epsilon: float
    qk_layernorm: bool
    init_method_std: float
    attention_dropout: float
    hidden_dropout: float
    mtp_num_layers: Optional[int]
    mtp_loss_scaling_factor: float
    # The token embedding's init std; None: init_method_std, as DeepSeek-V3 and Bridge. TorchTitan draws its
    # embedding from N(0, 1), and there the routers start spread where the proxy's start on a few experts
    # (docs/routing.md). Megatron also stops decaying the embedding's weights when it is set.
    embedding_init_method_std: Optional[float] = None

    # Parallelism.
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: Optional[int] = None
    pipeline_model_parallel_layout: Optional[str] = None
    context_parallel_size: int = 1
    expert_model_parallel_size: int = 1
    expert_tensor_parallel_size: int = 1
    sequence_parallel: bool = False

    # MoE dispatch and kernels.
    moe_token_dispatcher_type: Literal["alltoall", "allgather", "flex"] = "alltoall"
    moe_flex_dispatcher_backend: Optional[Literal["deepep", "hybridep"]] = None
    moe_hybridep_num_sms: int = 16
    moe_grouped_gemm: bool = True
    moe_permute_fusion: bool = True
    moe_router_fusion: bool = False
    moe_shared_expert_overlap: bool = False
    moe_router_force_load_balancing: bool = False
    moe_router_padding_for_quantization: bool = False
    # The experts' token counts stay on the GPU at EP=1 and TP=1: the all-gather dispatcher's two host syncs
    # per MoE layer go, TE's one-launch grouped GEMM reads the counts there (train.grouped_gemm).
    moe_counts_on_device: bool = False
    use_te_rng_tracker: bool = False  # needed by TE CUDA graphs
    cross_entropy_loss_fusion: bool = True
    cross_entropy_fusion_impl: Literal["te", "native"] = "te"
    apply_rope_fusion: bool = False
    gradient_accumulation_fusion: bool = False  # apex's wgrad kernels or TE's GEMM (train.wgrad_fusion)
    attention_backend: Literal["auto", "fused", "flash", "unfused", "local"] = "auto"

    # Memory: recompute and CUDA graphs.
    recompute_granularity: Optional[Literal["selective", "full"]] = None
    recompute_modules: Optional[list[str]] = None
    recompute_method: Optional[Literal["uniform", "block"]] = None
    recompute_num_layers: Optional[int] = None
    cuda_graph_impl: Literal["none", "local", "transformer_engine"] = "none"
    cuda_graph_scope: Optional[list[str]] = None

    LIMITS: ClassVar[dict[str, Limit]] = {
        **dict.fromkeys(
            (
                "num_layers",
                "hidden_size",
                "ffn_hidden_size",
                "num_attention_heads",
                "q_lora_rank",
                "kv_lora_rank",
                "qk_head_dim",
                "qk_pos_emb_head_dim",
                "v_head_dim",
                "num_moe_experts",
                "moe_ffn_hidden_size",
                "moe_shared_expert_intermediate_size",
                "moe_router_topk",
                "vocab_size",
                "make_vocab_size_divisible_by",
                "seq_length",
                "original_max_position_embeddings",
                "tensor_model_parallel_size",
                "pipeline_model_parallel_size",
                "virtual_pipeline_model_parallel_size",
                "context_parallel_size",
                "expert_model_parallel_size",
                "expert_tensor_parallel_size",
                "moe_hybridep_num_sms",
                "recompute_num_layers",
            ),
            SIZE,
        ),
        **dict.fromkeys(
            ("first_k_dense_replace", "moe_router_num_groups", "moe_router_group_topk", "mtp_num_layers"),
            COUNT,
        ),
        **dict.fromkeys(
            (
                "moe_router_topk_scaling_factor",
                "rotary_base",
                "rotary_scaling_factor",
                "norm_epsilon",
                "init_method_std",
                "embedding_init_method_std",
            ),
            POSITIVE,
        ),
        **dict.fromkeys(
            (
                "moe_router_bias_update_rate",
                "moe_aux_loss_coeff",
                "mscale",
                "mscale_all_dim",
                "mtp_loss_scaling_factor",
            ),
            NON_NEGATIVE,
        ),
        **dict.fromkeys(("attention_dropout", "hidden_dropout"), FRACTION),
    }

    def check(self) -> None:
        if self.first_k_dense_replace > self.num_layers:
            raise RecipeError(
                "model.first_k_dense_replace",
                f"{self.first_k_dense_replace} leading dense layers in a model of {self.num_layers} layers",
            )
        if self.moe_router_topk > self.num_moe_experts:
            raise RecipeError(
                "model.moe_router_topk", f"{self.moe_router_topk} exceeds {self.num_moe_experts} experts"
            )
        if self.moe_router_num_groups and self.num_moe_experts % self.moe_router_num_groups:
            raise RecipeError(
                "model.moe_router_num_groups",
                f"{self.num_moe_experts} experts not divisible into {self.moe_router_num_groups} groups",
            )
        if self.moe_router_group_topk > self.moe_router_num_groups:
            raise RecipeError(
                "model.moe_router_group_topk",
                f"{self.moe_router_group_topk} exceeds moe_router_num_groups={self.moe_router_num_groups}",
            )
        if self.num_moe_experts % self.expert_model_parallel_size:
            raise RecipeError(
                "model.expert_model_parallel_size",
                f"{self.num_moe_experts} experts not divisible by EP={self.expert_model_parallel_size}",
            )


@dataclass
class TrainConfig(Section):
    """Batch sizes, length of the run and host-side behaviour."""

    PATH: ClassVar[str] = "train"

    global_batch_size: int = 8
    micro_batch_size: int = 1
    train_iters: Optional[int] = 100
    train_samples: Optional[int] = None  # alternative to train_iters (Megatron --train-samples)
    exit_duration_in_mins: Optional[int] = None
    eval_interval: Optional[int] = None  # None: no validation during training
    eval_iters: int = 0
    manual_gc: bool = True
    manual_gc_interval: int = 10
    # What each manual collection sweeps: 2 is Bridge's gc.collect() (every tracked object); 1 is
    # TorchTitan's GarbageCollection (gc.collect(1): the objects made since the last full collection).
    manual_gc_generation: int = 2
    # gc.freeze() once training starts: what set-up made (the model, the data index, configs) leaves the
    # collector's generations, so a later full collection scans only what training has made.
    gc_freeze: bool = False
    seed: int = 1234
    check_for_nan_in_loss_and_grad: bool = True
    distributed_timeout_minutes: int = 60
    enable_experimental: bool = False
    # Bit-identical reruns and resumes: Megatron's deterministic mode and the env of DETERMINISTIC_ENV_VARS
    # (deterministic cuDNN attention and cuBLAS workspaces, a fixed NCCL algorithm, no fused cross entropy).
    deterministic: bool = False

    LIMITS: ClassVar[dict[str, Limit]] = {
        **dict.fromkeys(
            (
                "global_batch_size",
                "micro_batch_size",
                "train_iters",
                "exit_duration_in_mins",
                "eval_interval",
                "distributed_timeout_minutes",
            ),
            SIZE,
        ),
        "train_samples": Limit(1, 2**63 - 1),  # Megatron counts samples in int64
        "eval_iters": COUNT,
        "manual_gc_interval": COUNT,
        "manual_gc_generation": Limit(0, 2),
        "seed": Limit(0, 2**32 - 1),  # numpy's RandomState seeds the data order
    }

    def check(self) -> None:
        if self.train_iters is not None and self.train_samples is not None:
            raise RecipeError(
                "train.train_iters",
                f"{self.train_iters} given while train.train_samples={self.train_samples} counts this run in "
                "samples: give one (train.train_samples=None to count iterations, with the scheduler's "
                "lr_*_iters fields instead of its lr_*_samples)",
            )
        if self.train_iters is None and self.train_samples is None:
            raise RecipeError("train.train_iters", "None, and so is train.train_samples: give one")
        if self.micro_batch_size > self.global_batch_size:
            raise RecipeError(
                "train.micro_batch_size",
                f"{self.micro_batch_size} exceeds train.global_batch_size={self.global_batch_size}",
            )
        if self.manual_gc_generation != 2 and not self.manual_gc:
            raise RecipeError(
                "train.manual_gc_generation",
                f"{self.manual_gc_generation} given while train.manual_gc=False: only manual collections "
                "have a generation to choose (train.manual_gc=True)",
            )


@dataclass
class OptimizerConfig(Section):
    """Adam(W) with Megatron's distributed and precision-aware options."""

    PATH: ClassVar[str] = "optimizer"

    optimizer: Literal["adam", "sgd"] = "adam"
    lr: Optional[float] = 3e-4  # None: the MLPerf rule derives it from the GBS (Recipe.__post_init__)
    min_lr: float = 3e-5
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    use_distributed_optimizer: bool = True
    use_precision_aware_optimizer: bool = False
    main_grads_dtype: Dtype = "fp32"
    main_params_dtype: Dtype = "fp32"
    exp_avg_dtype: Dtype = "fp32"
    exp_avg_sq_dtype: Dtype = "fp32"
    # TE's param-remainder AdamW with Megatron's clip scale folded in, one Triton launch (train.fused_adam):
    # the precision-aware optimizer with bf16 params and moments only (plan.validate.check_precision).
    fused_adam: bool = False

    LIMITS: ClassVar[dict[str, Limit]] = {
        "lr": POSITIVE,
        "adam_eps": POSITIVE,
        **dict.fromkeys(("min_lr", "weight_decay", "clip_grad"), NON_NEGATIVE),
        **dict.fromkeys(("adam_beta1", "adam_beta2"), FRACTION),
    }

    def check(self) -> None:
        if self.lr is not None and self.min_lr > self.lr:
            raise RecipeError("optimizer.min_lr", f"{self.min_lr} exceeds optimizer.lr={self.lr}")


@dataclass
class SchedulerConfig(Section):
    """Learning-rate schedule, in iterations or (with ``train.train_samples``) in samples.

    A resumed run keeps the schedule its checkpoint saved: Megatron refuses a checkpoint whose schedule
    differs from the recipe's unless one of the two switches below says which one wins.
    """

    PATH: ClassVar[str] = "scheduler"

    lr_decay_style: Literal["cosine", "linear", "constant", "WSD"] = "cosine"
    lr_warmup_iters: int = 0
    lr_warmup_init: float = 0.0
    lr_decay_iters: Optional[int] = None  # None: decay over train_iters
    lr_wsd_decay_style: Literal["cosine", "linear", "exponential", "minus_sqrt"] = "cosine"
    lr_wsd_decay_iters: Optional[int] = None  # WSD: length of the final decay
    lr_warmup_samples: int = 0  # sample-based schedule, for recipes that use --train-samples
    lr_decay_samples: Optional[int] = None
    override_opt_param_scheduler: bool = False  # on resume: this recipe's schedule (extends a run)
    use_checkpoint_opt_param_scheduler: bool = False  # on resume: the checkpoint's schedule

    LIMITS: ClassVar[dict[str, Limit]] = {
        **dict.fromkeys(("lr_decay_iters", "lr_wsd_decay_iters"), SIZE),
        "lr_warmup_iters": COUNT,
        **dict.fromkeys(("lr_warmup_samples", "lr_decay_samples"), Limit(0, 2**63 - 1)),
        "lr_warmup_init": NON_NEGATIVE,
    }

    def check(self) -> None:
        if self.override_opt_param_scheduler and self.use_checkpoint_opt_param_scheduler:
            raise RecipeError(
                "scheduler.override_opt_param_scheduler",
                "and scheduler.use_checkpoint_opt_param_scheduler are both True: pick one",
            )


@dataclass
class DatasetConfig(Section):
    """Mock tokens, or a Megatron indexed (.bin/.idx) blend.

    ``data_paths`` is Megatron's ``--data-path`` list: prefixes, optionally preceded by weights
    (``["0.3", "/d/a_text_document", "0.7", "/d/b_text_document"]``). Paths imply indexed data:
    ``mock`` left at None becomes False when paths are given and True when none are.
    """

    PATH: ClassVar[str] = "dataset"

    mock: Optional[bool] = None
    data_paths: list[str] = field(default_factory=list)
    split: str = "99,1,0"
    validation_paths: list[str] = field(default_factory=list)  # separate validation blend (MLPerf)
    data_cache_path: Optional[str] = None
    mmap_bin_files: bool = True
    num_workers: int = 2
    create_attention_mask: bool = False

    LIMITS: ClassVar[dict[str, Limit]] = {"num_workers": COUNT}

    def __post_init__(self) -> None:
        if self.mock is None:
            self.mock = not self.data_paths
        super().__post_init__()

    def check(self) -> None:
        for name in ("data_paths", "validation_paths"):
            paths = getattr(self, name)
            if self.mock and paths:
                raise RecipeError(
                    f"dataset.{name}",
                    f"{paths} given with dataset.mock=True: paths imply indexed data, "
                    "so drop dataset.mock=True (or the paths)",
                )
            blend_prefixes(paths, f"dataset.{name}")
        parts = self.split.split(",")
        if (
            len(parts) != 3
            or not all(_is_number(p) and float(p) >= 0 for p in parts)
            or not any(float(p) for p in parts)
        ):
            raise RecipeError(
                "dataset.split", f"{self.split!r}: give three train,valid,test weights, e.g. '99,1,0'"
            )


@dataclass
class TokenizerConfig(Section):
    """Which tokenizer the data was made with; mock data needs none (the train side uses NullTokenizer)."""

    PATH: ClassVar[str] = "tokenizer"

    tokenizer_type: Literal["NullTokenizer", "HuggingFaceTokenizer"] = "NullTokenizer"
    tokenizer_model: Optional[str] = None


@dataclass
class CheckpointConfig(Section):
    """Megatron distributed checkpoints: where to save, what to load."""

    PATH: ClassVar[str] = "checkpoint"

    save: Optional[str] = None
    load: Optional[str] = None
    pretrained_checkpoint: Optional[str] = None  # weights only, e.g. a converted HF checkpoint
    save_interval: Optional[int] = None
    save_optim: bool = True
    load_optim: bool = True
    load_rng: bool = True
    async_save: bool = False
    dist_ckpt_strictness: Literal["assume_ok_unexpected", "log_unexpected", "log_all", "raise_all"] = (
        "assume_ok_unexpected"
    )

    LIMITS: ClassVar[dict[str, Limit]] = {"save_interval": SIZE}


@dataclass
class LoggerConfig(Section):
    """What goes to stdout, TensorBoard and W&B."""

    PATH: ClassVar[str] = "logger"

    log_interval: int = 1
    log_throughput: bool = True
    tensorboard_dir: Optional[str] = None
    log_timers_to_tensorboard: bool = False
    log_memory_to_tensorboard: bool = False
    log_validation_ppl_to_tensorboard: bool = False
    wandb_project: Optional[str] = None
    wandb_exp_name: Optional[str] = None
    logging_level: int = 20
    log_rank: Optional[int] = None  # the rank that prints the per-step metrics; None: the last rank

    LIMITS: ClassVar[dict[str, Limit]] = {
        "log_interval": SIZE,
        "logging_level": Limit(0, 50),  # Python logging: NOTSET .. CRITICAL
        "log_rank": COUNT,
    }


@dataclass
class MixedPrecisionConfig(Section):
    """BF16 compute with optional FP8 (``fp8_recipe``) and FP8 parameter all-gather."""

    PATH: ClassVar[str] = "mixed_precision"

    bf16: bool = True
    fp8_recipe: Optional[Literal["tensorwise", "delayed", "blockwise", "mxfp8"]] = None
    fp8_format: Literal["e4m3", "hybrid"] = "e4m3"
    fp8_param_gather: bool = False
    reuse_grad_buf_for_mxfp8_param_ag: bool = False
    grad_reduce_in_fp32: bool = False


@dataclass
class CommOverlapConfig(Section):
    """Communication overlap. The first two live on Megatron's DDP config."""

    PATH: ClassVar[str] = "comm_overlap"

    overlap_grad_reduce: bool = True
    overlap_param_gather: bool = True
    tp_comm_overlap: bool = False
    overlap_moe_expert_parallel_comm: bool = False
    delay_wgrad_compute: bool = False


@dataclass
class ProfilingConfig(Section):
    """PyTorch or Nsight profiling of a step window on chosen ranks."""

    PATH: ClassVar[str] = "profiling"

    use_pytorch_profiler: bool = False
    use_nsys_profiler: bool = False
    profile_step_start: int = 10
    profile_step_end: int = 12
    profile_ranks: list[int] = field(default_factory=lambda: [0])

    LIMITS: ClassVar[dict[str, Limit]] = {"profile_step_start": COUNT, "profile_step_end": COUNT}

    def check(self) -> None:
        if self.profile_step_end <= self.profile_step_start:
            raise RecipeError(
                "profiling.profile_step_end",
                f"{self.profile_step_end} is not after profile_step_start={self.profile_step_start}",
            )


@dataclass
class LaunchConfig(Section):
    """What the cluster must provide for this recipe, read by the executors and the planner."""

    PATH: ClassVar[str] = "launch"

    gpu_type: GpuType = "h100"
    num_nodes: int = 1
    gpus_per_node: int = 1
    nvl_segment_nodes: Optional[int] = None  # Slurm --segment: nodes that must share one NVLink domain
    bindpcie: bool = False  # wrap every rank in mlperf-common's bindpcie (CPU/NIC affinity)

    LIMITS: ClassVar[dict[str, Limit]] = dict.fromkeys(
        ("num_nodes", "gpus_per_node", "nvl_segment_nodes"), SIZE
    )

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node


@dataclass
class MLPerfConfig(Section):
    """MLPerf DSV3 benchmark rules ([mlperf-dsv3], checked by ``mlperf_rules``).

    ``proxy`` lifts the scale rules (GBS >= 15360, the LR formula, 1,024 eval sequences, the first
    evaluation step) so a small model can run the same code path; the mllog file then says so.
    ``eval_set`` picks the validation sequences (experiments/mlperf/README.md): ``"reference"`` draws
    them as the MLCommons reference code does (a seed-shuffled GPTDataset read through
    Megatron-Bridge's random sampler, a fresh set each evaluation); ``"first"`` evaluates the first
    ``eval_samples`` sequences of the file, unshuffled, as the benchmark's README words it.
    """

    PATH: ClassVar[str] = "mlperf"
    REFERENCE_GLOBAL_BATCH_SIZE: ClassVar[int] = 16384
    REFERENCE_LEARNING_RATE: ClassVar[float] = 0.000024  # [mlperf-dsv3]: at GBS 16384
    LEARNING_RATE_DECIMALS: ClassVar[int] = 9  # [mlperf-dsv3]: rounded to the 9th decimal place

    enabled: bool = False
    proxy: bool = False
    target_log_ppl: float = 3.60  # stop when validation loss <= target
    eval_samples: int = 1024  # validation sequences per evaluation
    eval_set: Literal["reference", "first"] = "reference"
    start_eval_step: Optional[int] = None  # None: the ruleset's 42 + 24576 // GBS
    submission_org: str = "reference"
    submission_platform: str = "unknown"
    submission_division: Literal["closed", "open"] = "closed"
    config_filename: Optional[str] = None  # the config_*.sh that launched the run; None: recipe name
    log_file: Optional[str] = None  # mllog output; None: <output_dir>/mlperf_log.txt

    LIMITS: ClassVar[dict[str, Limit]] = {
        "target_log_ppl": POSITIVE,
        "eval_samples": SIZE,
        "start_eval_step": SIZE,
    }

    @classmethod
    def base_learning_rate(cls, global_batch_size: int) -> float:
        """``opt_base_learning_rate = 0.000024 * sqrt(GBS / 16384)``, rounded to 9 decimals."""
        scaled = cls.REFERENCE_LEARNING_RATE * math.sqrt(global_batch_size / cls.REFERENCE_GLOBAL_BATCH_SIZE)
        return round(scaled, cls.LEARNING_RATE_DECIMALS)


@dataclass
class FieldChange:
    """One field a transform changed: old and new values as JSON text, and why."""

    field: str
    parent: str
    value: str
    reason: str


@dataclass
class ShrinkRecord:
    """What ``recipes.shrink`` did to a parent recipe: sizes changed, features substituted (with why).

    Every field not listed here equals the parent's, so a shrunk run vouches for the parent's flag set.
    """

    shrunk_from: str
    gpus: int
    gpu_type: GpuType
    changed: list[FieldChange] = field(default_factory=list)
    substituted: list[FieldChange] = field(default_factory=list)


@dataclass
class Recipe:
    """A whole pretraining run. Factories in ``dsv3_recipes.recipes`` return ``run.Config[Recipe]``."""

    name: str
    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    mixed_precision: MixedPrecisionConfig = field(default_factory=MixedPrecisionConfig)
    comm_overlap: CommOverlapConfig = field(default_factory=CommOverlapConfig)
    profiling: ProfilingConfig = field(default_factory=ProfilingConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    mlperf: MLPerfConfig = field(default_factory=MLPerfConfig)
    env_vars: dict[str, str] = field(default_factory=dict)
    output_dir: str = "nemo_experiments"
    shrink: Optional[ShrinkRecord] = None  # set by recipes.shrink: this run is a parent recipe, shrunk

    @property
    def run_env_vars(self) -> dict[str, str]:
        """The environment every rank starts with: the recipe's, and what its switches require."""
        return {**self.env_vars, **(DETERMINISTIC_ENV_VARS if self.train.deterministic else {})}

    def __post_init__(self) -> None:
        if isinstance(self.env_vars, dict):  # else check_types names it
            self.env_vars = env_as_text(self.env_vars)
        check_types(self, sections=False)  # each section checked its own fields when built
        if self.optimizer.lr is None and self.mlperf.enabled:  # derived: the benchmark's GBS rule
            self.optimizer.lr = MLPerfConfig.base_learning_rate(self.train.global_batch_size)
        self.check()

    def check(self) -> None:
        """The recipe's own fields (its sections check theirs)."""
        for name in self.env_vars:
            check_env_name(f"env_vars.{name}", name)
        if self.optimizer.lr is None:
            raise RecipeError("optimizer.lr", "None: only MLPerf recipes derive it (from the GBS); set it")

    def sections(self) -> list[Section]:
        """Every section, in field order."""
        return [
            getattr(self, f.name)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), Section)
        ]

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one optimizer step over every rank."""
        return self.train.global_batch_size * self.model.seq_length


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def env_as_text(env: dict) -> dict:
    """Env values as the recipe holds them: NeMo-Run's YAML loader (``ConfigSerializer.deserialize_yaml``,
    ``--yaml``) reads '32' back as 32, which is text again here."""
    return {k: str(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in env.items()}


def check_env_name(where: str, name: object) -> None:
    """An environment variable's name is a shell variable's: a launch renders ``export NAME=...``."""
    if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
        raise RecipeError(where, "is not a shell variable name ([A-Za-z_][A-Za-z0-9_]*)")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def blend_prefixes(paths: list[str], where: str = "dataset.data_paths") -> list[str]:
    """The prefixes of a Megatron ``--data-path`` list: ``[p, ...]`` or ``[weight, p, weight, p, ...]``."""
    if not any(_is_number(p) for p in paths):
        return list(paths)
    weights, prefixes = paths[::2], paths[1::2]
    if (
        len(paths) % 2
        or not all(_is_number(w) and float(w) > 0 for w in weights)
        or any(map(_is_number, prefixes))
    ):
        raise RecipeError(where, f"{paths}: a weighted blend alternates weights > 0 and prefixes")
    return prefixes


def check_types(obj: object, path: str = "", sections: bool = True) -> None:
    """Refuse any field whose value does not match its annotation (overrides arrive as text); with
    ``sections=False`` a section's own fields are left to it (``Section.check_fields``)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        where = f"{path}.{f.name}" if path else f.name
        expected = hints[f.name]
        if dataclasses.is_dataclass(value) and (sections or not isinstance(value, Section)):
            check_types(value, where)
        elif not matches(value, expected):
            raise RecipeError(
                where, f"expected {describe_type(expected)}, got {type(value).__name__} {value!r}"
            )


def matches(value: object, tp: object) -> bool:
    """Whether ``value`` fits the annotation ``tp`` (the recipe's own type check)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if origin is Literal:
        return value in args
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list) and all(matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            matches(k, args[0]) and matches(v, args[1]) for k, v in value.items()
        )
    return isinstance(value, tp)  # type: ignore[arg-type]


def describe_type(tp: object) -> str:
    """A type annotation in words, for error messages."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp)) if origin is None else str(tp).replace("typing.", "")
