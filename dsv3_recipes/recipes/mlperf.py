"""MLPerf Training DeepSeek-V3 671B (seed 002): the benchmark's rules on top of the 671B recipes.

The rules themselves live in ``dsv3_recipes.mlperf_rules`` (checked before every launch); the
factories here set a recipe that follows them, so only the cluster-specific fields (data paths, the
converted checkpoint, Slurm options) come from ``experiments/mlperf/config_*.sh``.
"""

from __future__ import annotations

import nemo_run as run

from dsv3_recipes import mlperf_rules as rules
from dsv3_recipes.recipe import Recipe
from dsv3_recipes.recipes.common import MCORE_DSV3_ENV_VARS, dsv3_671b
from dsv3_recipes.recipes.proxy import proxy_1gpu


def apply_rules(r: run.Config[Recipe]) -> None:
    """The benchmark's fixed hyperparameters (seed 002 "Optimizer spec", "Quality", "Model details")."""
    r.mlperf.enabled = True
    r.mlperf.max_steps = rules.LR_SCHEDULE_STEPS  # seed 002: LR scheduler's maximum number of steps
    r.train.train_iters = rules.LR_SCHEDULE_STEPS  # a run stops at the target long before
    r.train.eval_interval = 1  # seed 002: evaluate after every training step
    r.train.eval_iters = 1  # the 1,024 sequences in one evaluation batch
    r.model.seq_length = rules.SEQ_LENGTH  # seed 002: context length 4,096
    r.model.moe_aux_loss_coeff = rules.MOE_AUX_LOSS_COEFF  # ruleset 6.1.0 checks moe_aux_loss_coeff
    r.model.moe_router_force_load_balancing = False  # a convergence run routes tokens for real

    o = r.optimizer
    o.optimizer = "adam"  # seed 002: AdamW (Megatron's adam decouples weight decay)
    o.lr = rules.base_learning_rate(r.train.global_batch_size)  # seed 002: 0.000024*sqrt(GBS/16384)
    o.min_lr = rules.MIN_LEARNING_RATE  # seed 002
    for name, value in rules.ADAMW.items():  # the ruleset's AdamW values
        setattr(o, name, value)

    s = r.scheduler
    s.lr_decay_style = "cosine"  # ruleset: "cosine with linear warmup"
    s.lr_warmup_iters = rules.WARMUP_STEPS  # seed 002: 4 warmup steps
    s.lr_warmup_init = 0.0
    s.lr_decay_iters = rules.LR_SCHEDULE_STEPS  # seed 002: 12,000; decay steps = 12,000 - warmup

    r.dataset.mock = False  # seed 002: C4; give dataset.data_paths and dataset.validation_paths
    r.dataset.create_attention_mask = False
    r.tokenizer.tokenizer_type = "HuggingFaceTokenizer"  # seed 002: the Llama 3.1 8B tokenizer

    c = r.checkpoint
    c.save_optim = True  # a run that spans Slurm jobs resumes optimizer, scheduler and RNG
    c.load_optim = True
    c.load_rng = True


def _mlperf_671b(name: str, gpu_type: str, num_nodes: int, gpus_per_node: int, gbs: int) -> run.Partial:
    task = dsv3_671b(name, gpu_type=gpu_type, num_nodes=num_nodes, gpus_per_node=gpus_per_node)
    r = task.recipe
    r.train.global_batch_size = gbs
    r.train.micro_batch_size = 1
    apply_rules(r)
    r.mlperf.submission_platform = f"{num_nodes}x{gpu_type.upper()}"
    r.env_vars = dict(MCORE_DSV3_ENV_VARS)
    return task


def mlperf_gb300_256gpu() -> run.Partial:
    """MLPerf DSV3 on 64 GB300 nodes (seed 002's reference system): TP1 PP4 EP64, GBS 16384, BF16."""
    task = _mlperf_671b("mlperf_gb300_256gpu", gpu_type="gb300", num_nodes=64, gpus_per_node=4, gbs=16384)
    r = task.recipe
    m = r.model
    # seed 002's config_GB300_64x4x256xtp1pp4cp1: TP1 PP4 CP1, 256 sequences per data-parallel rank.
    m.tensor_model_parallel_size = 1
    m.pipeline_model_parallel_size = 4
    m.context_parallel_size = 1
    m.expert_model_parallel_size = 64  # MLPerf reference config; 16 nodes = one NVLink domain
    m.expert_tensor_parallel_size = 1
    # Bridge's DSV3 layout for PP4 (set_deepseek_v3_pipeline_model_parallel_layout): MTP with the loss.
    m.pipeline_model_parallel_layout = "Et*16|t*16|t*16|t*13mL"
    m.recompute_granularity = "selective"
    m.recompute_modules = ["mlp", "moe_act"]  # MLPerf reference config
    m.moe_token_dispatcher_type = "alltoall"  # MLPerf reference config
    m.moe_grouped_gemm = True
    r.launch.nvl_segment_nodes = 16  # EP64 all-to-all inside one NVL72 rack (16 of its 18 trays)
    r.launch.bindpcie = True  # CPU/NIC affinity per rank, as seed 000 does on GB200
    r.env_vars.update(
        {
            "NCCL_NET_GDR_LEVEL": "PHB",  # MLPerf reference launcher on GB200/GB300
            "NCCL_NET_GDR_C2C": "1",  # MLPerf reference launcher on GB200/GB300
            "TORCH_NCCL_AVOID_RECORD_STREAMS": "1",
            "TORCH_NCCL_HIGH_PRIORITY": "1",
        }
    )
    return task


def mlperf_h100_1024gpu() -> run.Partial:
    """MLPerf DSV3 on 128 H100 nodes: seed 001's TP2 PP8 VPP4 EP64 layout in BF16, GBS 16384."""
    task = _mlperf_671b("mlperf_h100_1024gpu", gpu_type="h100", num_nodes=128, gpus_per_node=8, gbs=16384)
    r = task.recipe
    m = r.model
    m.tensor_model_parallel_size = 2  # seed 001 / Bridge's 1024xH100 DSV3 benchmark
    m.sequence_parallel = True  # required with TP > 1 and MoE
    m.pipeline_model_parallel_size = 8  # seed 001
    m.virtual_pipeline_model_parallel_size = 4  # 32 layout stages / PP8
    m.pipeline_model_parallel_layout = "Et|(tt|)*30mL"  # seed 001
    m.context_parallel_size = 1
    m.expert_model_parallel_size = 64  # seed 001
    m.expert_tensor_parallel_size = 1
    m.moe_token_dispatcher_type = "flex"  # seed 001: DeepEP
    m.moe_flex_dispatcher_backend = "deepep"  # seed 001
    m.recompute_granularity = "selective"  # seed 001
    m.recompute_modules = ["mla_up_proj", "mlp"]  # seed 001
    o = r.optimizer
    o.use_precision_aware_optimizer = True  # seed 001: BF16 moments
    o.exp_avg_dtype = "bf16"
    o.exp_avg_sq_dtype = "bf16"
    r.comm_overlap.overlap_moe_expert_parallel_comm = True  # seed 001: EP A2A overlap
    r.comm_overlap.delay_wgrad_compute = True  # seed 001
    r.launch.bindpcie = True  # seed 001: "Optional, Recommended"
    r.env_vars["TORCH_NCCL_AVOID_RECORD_STREAMS"] = "0"  # seed 001's run.sh
    return task


def mlperf_proxy_1gpu(gpu_type: str = "h100") -> run.Partial:
    """MLPerf code path on one GPU: the 3.5B proxy with the benchmark's rules, proxy-scale numbers."""
    task = proxy_1gpu(gpu_type)
    r = task.recipe
    r.name = "mlperf_proxy_1gpu"
    apply_rules(r)
    r.mlperf.proxy = True  # lifts GBS >= 15360, the LR formula and the 1,024-sequence evaluation
    r.mlperf.submission_platform = "1xH100-proxy"
    r.optimizer.lr = 3e-4  # the proxy's own LR: the GBS formula would give 5e-7 at GBS 8
    r.train.train_iters = 60  # stops at the target well before this
    r.mlperf.eval_samples = 32  # forward passes only: an evaluation costs about 1.3 training steps
    r.mlperf.start_eval_step = 4
    r.dataset.mock = True  # runs anywhere; the GPU check gives generated C4-style data instead
    r.tokenizer.tokenizer_type = "NullTokenizer"
    return task
