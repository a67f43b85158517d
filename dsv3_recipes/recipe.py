"""The Recipe: one typed, Fiddle-configurable description of a DSV3 pretraining run.

Sections and field names mirror Megatron-Bridge's ConfigContainer (``model``, ``train``, ``optimizer``,
``scheduler``, ``dataset``, ``tokenizer``, ``checkpoint``, ``logger``, ``mixed_precision``,
``comm_overlap``, ``env_vars``) so that ``model.expert_model_parallel_size`` or ``optimizer.lr`` mean
what they mean in Megatron. ``launch`` holds what the cluster must provide (GPU type, nodes, NVL
segment, bindpcie) and ``mlperf`` the benchmark rules when a recipe runs in MLPerf mode.

This module imports only the standard library: the launch side builds, overrides and validates
recipes on a login node that has no torch.
"""

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Literal, Optional

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


@dataclass
class ModelConfig:
    """Architecture, parallelism and kernel choices: Megatron keeps all three on the model provider."""

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
    use_te_rng_tracker: bool = False  # needed by TE CUDA graphs
    cross_entropy_loss_fusion: bool = True
    cross_entropy_fusion_impl: Literal["te", "native"] = "te"
    apply_rope_fusion: bool = False
    gradient_accumulation_fusion: bool = False  # needs apex's fused wgrad kernels
    attention_backend: Literal["auto", "fused", "flash", "unfused", "local"] = "auto"

    # Memory: recompute and CUDA graphs.
    recompute_granularity: Optional[Literal["selective", "full"]] = None
    recompute_modules: Optional[list[str]] = None
    recompute_method: Optional[Literal["uniform", "block"]] = None
    recompute_num_layers: Optional[int] = None
    cuda_graph_impl: Literal["none", "local", "transformer_engine"] = "none"
    cuda_graph_scope: Optional[list[str]] = None


@dataclass
class TrainConfig:
    """Batch sizes, length of the run and host-side behaviour."""

    global_batch_size: int = 8
    micro_batch_size: int = 1
    train_iters: Optional[int] = 100
    train_samples: Optional[int] = None  # alternative to train_iters (Megatron --train-samples)
    exit_duration_in_mins: Optional[int] = None
    eval_interval: Optional[int] = None  # None: no validation during training
    eval_iters: int = 0
    manual_gc: bool = True
    manual_gc_interval: int = 10
    seed: int = 1234
    check_for_nan_in_loss_and_grad: bool = True
    distributed_timeout_minutes: int = 60
    enable_experimental: bool = False
    # Bit-identical reruns and resumes: Megatron's deterministic mode and the env of DETERMINISTIC_ENV_VARS
    # (deterministic cuDNN attention and cuBLAS workspaces, a fixed NCCL algorithm, no fused cross entropy).
    deterministic: bool = False


@dataclass
class OptimizerConfig:
    """Adam(W) with Megatron's distributed and precision-aware options."""

    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 3e-4
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


@dataclass
class SchedulerConfig:
    """Learning-rate schedule, in iterations or (with ``train.train_samples``) in samples."""

    lr_decay_style: Literal["cosine", "linear", "constant", "WSD"] = "cosine"
    lr_warmup_iters: int = 0
    lr_warmup_init: float = 0.0
    lr_decay_iters: Optional[int] = None  # None: decay over train_iters
    lr_wsd_decay_style: Literal["cosine", "linear", "exponential", "minus_sqrt"] = "cosine"
    lr_wsd_decay_iters: Optional[int] = None  # WSD: length of the final decay
    lr_warmup_samples: int = 0  # sample-based schedule, for recipes that use --train-samples
    lr_decay_samples: Optional[int] = None
    # On resume, take this schedule instead of the checkpoint's (Megatron's --override-opt_param-scheduler):
    # what extending a run to more train_iters needs.
    override_opt_param_scheduler: bool = False


@dataclass
class DatasetConfig:
    """Mock tokens, or a Megatron indexed (.bin/.idx) blend.

    ``data_paths`` is Megatron's ``--data-path`` list: prefixes, optionally preceded by weights
    (``["0.3", "/d/a_text_document", "0.7", "/d/b_text_document"]``).
    """

    mock: bool = True
    data_paths: list[str] = field(default_factory=list)
    split: str = "99,1,0"
    validation_paths: list[str] = field(default_factory=list)  # separate validation blend (MLPerf)
    data_cache_path: Optional[str] = None
    mmap_bin_files: bool = True
    num_workers: int = 2
    create_attention_mask: bool = False


@dataclass
class TokenizerConfig:
    """Which tokenizer the data was made with; mock data needs none (NullTokenizer)."""

    tokenizer_type: Literal["NullTokenizer", "HuggingFaceTokenizer"] = "NullTokenizer"
    tokenizer_model: Optional[str] = None


@dataclass
class CheckpointConfig:
    """Megatron distributed checkpoints: where to save, what to load."""

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


@dataclass
class LoggerConfig:
    """What goes to stdout, TensorBoard and W&B."""

    log_interval: int = 1
    log_throughput: bool = True
    tensorboard_dir: Optional[str] = None
    log_timers_to_tensorboard: bool = False
    log_memory_to_tensorboard: bool = False
    log_validation_ppl_to_tensorboard: bool = False
    wandb_project: Optional[str] = None
    wandb_exp_name: Optional[str] = None
    logging_level: int = 20


@dataclass
class MixedPrecisionConfig:
    """BF16 compute with optional FP8 (``fp8_recipe``) and FP8 parameter all-gather."""

    bf16: bool = True
    fp8_recipe: Optional[Literal["tensorwise", "delayed", "blockwise", "mxfp8"]] = None
    fp8_format: Literal["e4m3", "hybrid"] = "e4m3"
    fp8_param_gather: bool = False
    reuse_grad_buf_for_mxfp8_param_ag: bool = False
    grad_reduce_in_fp32: bool = False


@dataclass
class CommOverlapConfig:
    """Communication overlap. The first two live on Megatron's DDP config."""

    overlap_grad_reduce: bool = True
    overlap_param_gather: bool = True
    tp_comm_overlap: bool = False
    overlap_moe_expert_parallel_comm: bool = False
    delay_wgrad_compute: bool = False


@dataclass
class ProfilingConfig:
    """PyTorch or Nsight profiling of a step window on chosen ranks."""

    use_pytorch_profiler: bool = False
    use_nsys_profiler: bool = False
    profile_step_start: int = 10
    profile_step_end: int = 12
    profile_ranks: list[int] = field(default_factory=lambda: [0])


@dataclass
class LaunchConfig:
    """What the cluster must provide for this recipe, read by the executors and the planner."""

    gpu_type: GpuType = "h100"
    num_nodes: int = 1
    gpus_per_node: int = 1
    nvl_segment_nodes: Optional[int] = None  # Slurm --segment: nodes that must share one NVLink domain
    bindpcie: bool = False  # wrap every rank in mlperf-common's bindpcie (CPU/NIC affinity)

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node


@dataclass
class MLPerfConfig:
    """MLPerf DSV3 benchmark rules (seed 002; checked by ``mlperf_rules``).

    ``proxy`` lifts the scale rules (GBS >= 15360, the LR formula, 1,024 eval sequences, the first
    evaluation step) so a small model can run the same code path; the mllog file then says so.
    """

    enabled: bool = False
    proxy: bool = False
    target_log_ppl: float = 3.60  # stop when validation loss <= target
    eval_samples: int = 1024  # first 1,024 validation sequences, unshuffled
    max_steps: int = 12000  # LR schedule length
    start_eval_step: Optional[int] = None  # None: the ruleset's 42 + 24576 // GBS
    submission_org: str = "reference"
    submission_platform: str = "unknown"
    submission_division: Literal["closed", "open"] = "closed"
    config_filename: Optional[str] = None  # the config_*.sh that launched the run; None: recipe name
    log_file: Optional[str] = None  # mllog output; None: <output_dir>/mlperf_log.txt


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

    @property
    def data_parallel_size(self) -> int:
        m = self.model
        return self.launch.num_gpus // (
            m.tensor_model_parallel_size * m.pipeline_model_parallel_size * m.context_parallel_size
        )


def check_types(obj: object, path: str = "") -> None:
    """Refuse any field whose value does not match its annotation (overrides arrive as text)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        where = f"{path}.{f.name}" if path else f.name
        expected = hints[f.name]
        if dataclasses.is_dataclass(value):
            check_types(value, where)
        elif not _matches(value, expected):
            raise RecipeError(
                where, f"expected {describe_type(expected)}, got {type(value).__name__} {value!r}"
            )


def _matches(value: object, tp: object) -> bool:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return value in args
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            _matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items()
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
