"""GB200 NVL72 recipes (4 GPUs per node, 72-GPU NVLink domains)."""

from __future__ import annotations

import nemo_run as run

from dsv3_recipes.recipes.common import MCORE_DSV3_ENV_VARS, dsv3_671b
from dsv3_recipes.recipes.torchtitan import torchtitan_bf16


def gb200_mxfp8_256gpu() -> run.Partial:
    """Megatron-Core's GB200 DSV3 guide (seed 000): MXFP8 on 256 GB200, every flag of its launch script."""
    task = dsv3_671b("gb200_mxfp8_256gpu", gpu_type="gb200", num_nodes=64, gpus_per_node=4)
    r = task.recipe
    # EP32 all-to-all must stay inside one NVL72 rack; bindpcie wraps every rank (seed 000 sections 3-4).
    r.launch.nvl_segment_nodes = 8
    r.launch.bindpcie = True

    m = r.model
    m.tensor_model_parallel_size = 1  # seed 000
    m.pipeline_model_parallel_size = 8  # seed 000
    m.virtual_pipeline_model_parallel_size = 4  # seed 000: 32 layout stages / PP8
    m.pipeline_model_parallel_layout = "Et|(tt|)*30L"  # seed 000
    m.expert_model_parallel_size = 32  # seed 000
    m.expert_tensor_parallel_size = 1  # seed 000
    m.context_parallel_size = 1  # seed 000
    m.sequence_parallel = True  # seed 000 (a no-op at TP1, as in Megatron-LM)
    m.mtp_num_layers = None  # seed 000 launches without --mtp-num-layers
    # seed 000's --max-position-embeddings 4096 is seq_length here: Bridge sizes RoPE from seq_length.
    m.seq_length = 4096  # seed 000
    m.make_vocab_size_divisible_by = 3232  # seed 000
    m.init_method_std = 0.02  # seed 000
    m.moe_router_padding_for_quantization = True  # seed 000
    m.moe_router_fusion = True  # seed 000
    m.moe_permute_fusion = True  # seed 000
    m.moe_grouped_gemm = True  # seed 000
    m.moe_router_force_load_balancing = True  # seed 000 (benchmark only)
    m.moe_token_dispatcher_type = "flex"  # seed 000
    m.moe_flex_dispatcher_backend = "hybridep"  # seed 000
    m.moe_hybridep_num_sms = 32  # seed 000
    m.cross_entropy_loss_fusion = True  # seed 000
    m.cross_entropy_fusion_impl = "te"  # seed 000
    # seed 000's --use-flash-attn only switches Megatron's legacy attention; with TE, "auto" picks cuDNN
    # fused attention (NVTE_FUSED_ATTN=1 below), as the seed's launch does.
    m.attention_backend = "auto"  # seed 000: --use-flash-attn, as explained above
    m.recompute_granularity = "selective"  # seed 000
    m.recompute_modules = ["moe_act", "mlp"]  # seed 000
    m.cuda_graph_impl = "transformer_engine"  # seed 000
    m.cuda_graph_scope = ["attn", "moe_router", "moe_preprocess"]  # seed 000
    m.use_te_rng_tracker = True  # seed 000: --te-rng-tracker

    t = r.train
    t.micro_batch_size = 1  # seed 000
    t.global_batch_size = 2048  # seed 000
    t.train_iters = None  # seed 000 counts samples (--train-samples), not iterations
    t.train_samples = 585937500  # seed 000
    t.exit_duration_in_mins = 220  # seed 000
    t.check_for_nan_in_loss_and_grad = False  # seed 000: --no-check-for-nan-in-loss-and-grad
    t.manual_gc = True  # seed 000
    t.manual_gc_interval = 10  # seed 000
    t.eval_iters = 32  # seed 000
    t.eval_interval = 200  # seed 000
    t.distributed_timeout_minutes = 60  # seed 000
    t.enable_experimental = True  # seed 000

    o = r.optimizer
    o.lr = 3.9e-6  # seed 000
    o.min_lr = 3.9e-7  # seed 000
    o.weight_decay = 0.1  # seed 000
    o.adam_beta1 = 0.9  # seed 000
    o.adam_beta2 = 0.95  # seed 000
    o.clip_grad = 1.0  # seed 000
    o.use_distributed_optimizer = True  # seed 000
    o.use_precision_aware_optimizer = True  # seed 000
    o.main_grads_dtype = "fp32"  # seed 000
    o.main_params_dtype = "fp32"  # seed 000
    o.exp_avg_dtype = "bf16"  # seed 000
    o.exp_avg_sq_dtype = "bf16"  # seed 000

    s = r.scheduler
    s.lr_decay_style = "cosine"  # seed 000
    s.lr_warmup_init = 3.9e-7  # seed 000
    s.lr_warmup_samples = 1536000  # seed 000
    s.lr_decay_samples = 584765624  # seed 000

    d = r.dataset
    d.mock = False  # seed 000 trains on a real corpus: give dataset.data_paths
    d.split = "99,1,0"  # seed 000
    d.mmap_bin_files = False  # seed 000: --no-mmap-bin-files
    d.create_attention_mask = False  # seed 000: --no-create-attention-mask-in-dataloader
    d.num_workers = 6  # seed 000
    r.tokenizer.tokenizer_type = "HuggingFaceTokenizer"  # seed 000
    r.tokenizer.tokenizer_model = "unsloth/DeepSeek-V3"  # seed 000

    c = r.checkpoint
    c.save_interval = 500  # seed 000
    c.save_optim = False  # seed 000: --no-save-optim
    c.load_optim = False  # seed 000: --no-load-optim
    c.load_rng = False  # seed 000: --no-load-rng
    c.dist_ckpt_strictness = "log_all"  # seed 000

    lg = r.logger
    lg.log_interval = 1  # seed 000
    lg.log_throughput = True  # seed 000
    lg.log_timers_to_tensorboard = True  # seed 000
    lg.log_memory_to_tensorboard = True  # seed 000
    lg.log_validation_ppl_to_tensorboard = True  # seed 000
    lg.logging_level = 40  # seed 000
    lg.wandb_project = "deepseek-v3-benchmarking-v0.15"  # seed 000
    lg.wandb_exp_name = "DeepSeek-V3-TP1PP8EP32CP1VPP4-MBS1GBS2048-v0.15"  # seed 000

    mp = r.mixed_precision
    mp.bf16 = True  # seed 000
    mp.fp8_recipe = "mxfp8"  # seed 000
    mp.fp8_format = "e4m3"  # seed 000
    mp.fp8_param_gather = True  # seed 000
    mp.reuse_grad_buf_for_mxfp8_param_ag = True  # seed 000

    r.comm_overlap.overlap_grad_reduce = True  # seed 000
    r.comm_overlap.overlap_param_gather = True  # seed 000

    r.env_vars = {
        **MCORE_DSV3_ENV_VARS,
        "NVTE_FWD_LAYERNORM_SM_MARGIN": "0",  # seed 000: norms may use every SM
        "NVTE_BWD_LAYERNORM_SM_MARGIN": "0",  # seed 000
        "NVLINK_DOMAIN_SIZE": "72",  # seed 000: HybridEP sees the whole NVL72 rack
        "NCCL_GRAPH_REGISTER": "0",  # seed 000: no NCCL buffer registration under CUDA graphs
    }
    return task


def gb200_bf16_256gpu() -> run.Partial:
    """TorchTitan's GB200 BF16 baseline (seed 003): 256 GPUs, DP32 EP32 PP8, local batch 16, 200 steps."""
    return torchtitan_bf16("gb200_bf16_256gpu", gpu_type="gb200")
