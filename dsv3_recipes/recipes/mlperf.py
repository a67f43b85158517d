"""MLPerf Training DeepSeek-V3 671B ([mlperf-dsv3]): the benchmark's rules on top of the 671B recipes.

The rules themselves live in ``dsv3_recipes.mlperf.rules`` (checked whenever a recipe is validated);
the factories here set a recipe that follows them, so only the cluster-specific fields (data paths,
the converted checkpoint, Slurm options) come from ``experiments/mlperf/config_*.sh``. The learning
rate is left to the rule: ``optimizer.lr=None`` is derived from the GBS when the recipe is built, so
overriding ``train.global_batch_size`` moves it (an explicit ``optimizer.lr`` is checked instead).
"""

from __future__ import annotations

import fiddle as fdl

from dsv3_recipes.mlperf import rules
from dsv3_recipes.recipe.schema import Recipe
from dsv3_recipes.recipes.common import MCORE_DSV3_ENV_VARS, dsv3_671b, registered
from dsv3_recipes.recipes.h100 import h100_fp8_blockwise
from dsv3_recipes.recipes.proxy import proxy_1gpu


def apply_rules(r: fdl.Config[Recipe]) -> None:
    """The benchmark's fixed hyperparameters ([mlperf-dsv3] "Optimizer spec", "Quality", "Model details")."""
    r.mlperf.enabled = True  # the rules below are checked (mlperf_rules) and the mllog file is written
    # [mlperf-ref] rcp_logs: max_steps 12000 (its config stops at MAX_STEPS=100); it also sizes the
    # validation set that mlperf.eval_set='reference' draws from. A run stops at the target long before.
    r.train.train_iters = rules.LR_SCHEDULE_STEPS
    r.train.eval_interval = 1  # [mlperf-dsv3]: evaluate after every training step
    r.train.eval_iters = 1  # [mlperf-ref]: EVAL_BATCHES=1, the 1,024 sequences in one evaluation batch
    r.model.seq_length = rules.SEQ_LENGTH  # [mlperf-dsv3]: context length 4,096
    r.model.moe_aux_loss_coeff = rules.MOE_AUX_LOSS_COEFF  # [mlperf-rules] checks moe_aux_loss_coeff
    r.model.moe_router_force_load_balancing = False  # [mlperf-ref]: a convergence run routes for real

    o = r.optimizer
    o.optimizer = "adam"  # [mlperf-dsv3]: AdamW (Megatron's adam decouples weight decay)
    o.lr = None  # [mlperf-dsv3]: 0.000024 * sqrt(GBS / 16384), derived when the recipe is built
    o.min_lr = rules.MIN_LEARNING_RATE  # [mlperf-dsv3]
    for name, value in rules.ADAMW.items():  # [mlperf-rules]'s AdamW values
        setattr(o, name, value)

    s = r.scheduler
    s.lr_decay_style = "cosine"  # [mlperf-rules]: "cosine with linear warmup"
    s.lr_warmup_iters = rules.WARMUP_STEPS  # [mlperf-dsv3]: 4 warmup steps
    s.lr_warmup_init = 0.0  # [mlperf-ref]: Bridge's default
    s.lr_decay_iters = rules.LR_DECAY_ITERS  # [mlperf-ref]: LR_DECAY_STEPS=11996 = 12,000 - warmup

    r.dataset.mock = False  # [mlperf-dsv3]: C4; give dataset.data_paths and dataset.validation_paths
    r.dataset.create_attention_mask = False  # [mlperf-ref]: causal attention kernels need no mask
    r.tokenizer.tokenizer_type = "HuggingFaceTokenizer"  # [mlperf-dsv3]: the Llama 3.1 8B tokenizer

    c = r.checkpoint
    # A run that spans Slurm jobs resumes optimizer, scheduler and RNG ([mlperf-dsv3] "Saving and
    # restoring a checkpoint").
    c.save_optim = True
    c.load_optim = True
    c.load_rng = True


@registered
def mlperf_gb300_256gpu() -> fdl.Partial:
    """MLPerf DSV3 on 64 GB300 nodes ([mlperf-dsv3]'s reference system): TP1 PP4 EP64, GBS 16384, BF16."""
    task = dsv3_671b("mlperf_gb300_256gpu", gpu_type="gb300", num_nodes=64, gpus_per_node=4)
    r = task.recipe
    r.train.global_batch_size = 16384  # [mlperf-ref] config_GB300_64x4x256xtp1pp4cp1.sh: GBS
    r.train.micro_batch_size = 1  # [mlperf-ref]: MBS
    apply_rules(r)
    r.mlperf.submission_platform = "64xGB300"  # the mllog submission_platform
    m = r.model
    m.tensor_model_parallel_size = 1  # [mlperf-ref] config_GB300_64x4x256xtp1pp4cp1.sh
    m.pipeline_model_parallel_size = 4  # [mlperf-ref]
    m.context_parallel_size = 1  # [mlperf-ref]
    m.expert_model_parallel_size = 64  # [mlperf-ref]; 16 nodes = one NVLink domain
    m.expert_tensor_parallel_size = 1  # [mlperf-ref]
    # [mlperf-ref] set_deepseek_v3_pipeline_model_parallel_layout for PP4 ([bridge-dsv3]): MTP with the loss.
    m.pipeline_model_parallel_layout = "Et*16|t*16|t*16|t*13mL"
    m.recompute_granularity = "selective"  # [mlperf-ref]: RECOMPUTE_MODULES="mlp,moe_act"
    m.recompute_modules = ["mlp", "moe_act"]  # [mlperf-ref]
    m.moe_token_dispatcher_type = "alltoall"  # [mlperf-ref]: MOE_TOKEN_DISPATCHER_TYPE
    m.moe_grouped_gemm = True  # [mlperf-ref]: MOE_GROUPED_GEMM
    r.launch.nvl_segment_nodes = 16  # EP64 all-to-all inside one NVL72 rack (16 of its 18 trays)
    r.launch.bindpcie = True  # CPU/NIC affinity per rank, as [mcore-gb200] does on GB200
    r.env_vars = {  # [mlperf-ref]
        **MCORE_DSV3_ENV_VARS,
        "NCCL_NET_GDR_LEVEL": "PHB",  # [mlperf-ref] run_deepseek.py on GB200/GB300
        "NCCL_NET_GDR_C2C": "1",  # [mlperf-ref] run_deepseek.py on GB200/GB300
        "TORCH_NCCL_AVOID_RECORD_STREAMS": "1",  # [mlperf-ref] run_deepseek.py PERF_ENV_VARS
        "TORCH_NCCL_HIGH_PRIORITY": "1",  # [mlperf-ref] run_deepseek.py PERF_ENV_VARS
    }
    return task


@registered
def mlperf_h100_1024gpu() -> fdl.Partial:
    """MLPerf DSV3 on 128 H100 nodes: the H100 guide's recipe ([mcore-h100]) in BF16 at GBS 16384."""
    task = h100_fp8_blockwise()
    r = task.recipe
    r.name = "mlperf_h100_1024gpu"  # a variant of h100_fp8_blockwise
    r.train.global_batch_size = 16384  # [mlperf-ref]: the reference GBS
    apply_rules(r)
    r.mlperf.submission_platform = "128xH100"  # the mllog submission_platform
    # BF16, as the reference trains ([mlperf-ref]): no FP8 recipe, nothing to gather or pad for FP8.
    r.mixed_precision.fp8_recipe = None
    r.mixed_precision.fp8_param_gather = False
    r.model.moe_router_padding_for_quantization = False
    return task


@registered
def mlperf_proxy_1gpu(gpu_type: str = "h100") -> fdl.Partial:
    """MLPerf code path on one GPU: the 3.5B proxy with the benchmark's rules, proxy-scale numbers."""
    task = proxy_1gpu(gpu_type)
    r = task.recipe
    r.name = "mlperf_proxy_1gpu"  # a variant of proxy_1gpu
    apply_rules(r)
    r.mlperf.proxy = True  # lifts GBS >= 15360, the LR formula and the 1,024-sequence evaluation
    r.mlperf.submission_platform = "1xH100-proxy"  # the mllog submission_platform
    r.optimizer.lr = 3e-4  # the proxy's own LR: the GBS formula would give 5e-7 at GBS 8
    r.train.train_iters = 60  # stops at the target well before this
    # Forward passes only: 32 sequences cost about 1.3 training steps; evaluation from step 4.
    r.mlperf.eval_samples = 32
    r.mlperf.start_eval_step = 4
    # Runs anywhere on mock tokens; experiments/mlperf/proxy_gpu.sh gives generated C4-style data.
    r.dataset.mock = True
    r.tokenizer.tokenizer_type = "NullTokenizer"
    return task
