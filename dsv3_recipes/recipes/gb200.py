"""GB200 NVL72 recipes (4 GPUs per node, 72-GPU NVLink domains)."""

from __future__ import annotations

import fiddle as fdl

from dsv3_recipes.recipes.common import MCORE_DSV3_ENV_VARS, dsv3_671b, registered
from dsv3_recipes.recipes.torchtitan import torchtitan_bf16


@registered
def gb200_mxfp8_256gpu() -> fdl.Partial:
    """Megatron-Core's GB200 DSV3 guide ([mcore-gb200]): MXFP8 on 256 GB200, every flag of its launch."""
    task = dsv3_671b("gb200_mxfp8_256gpu", gpu_type="gb200", num_nodes=64, gpus_per_node=4)
    r = task.recipe
    r.launch.nvl_segment_nodes = 8  # [mcore-gb200] section 4: EP32's all-to-all inside one NVL72 rack
    r.launch.bindpcie = True  # [mcore-gb200] section 3: bindpcie wraps every rank

    m = r.model
    m.tensor_model_parallel_size = 1  # [mcore-gb200]
    m.pipeline_model_parallel_size = 8  # [mcore-gb200]
    m.virtual_pipeline_model_parallel_size = 4  # [mcore-gb200]: 32 layout stages / PP8
    m.pipeline_model_parallel_layout = "Et|(tt|)*30L"  # [mcore-gb200]
    m.expert_model_parallel_size = 32  # [mcore-gb200]
    m.expert_tensor_parallel_size = 1  # [mcore-gb200]
    m.context_parallel_size = 1  # [mcore-gb200]
    m.sequence_parallel = True  # [mcore-gb200] (a no-op at TP1, as in Megatron-LM)
    m.mtp_num_layers = None  # [mcore-gb200] launches without --mtp-num-layers
    # [mcore-gb200]'s --max-position-embeddings 4096 is seq_length here: Bridge sizes RoPE from seq_length.
    m.seq_length = 4096  # [mcore-gb200]
    m.make_vocab_size_divisible_by = 3232  # [mcore-gb200]
    m.init_method_std = 0.02  # [mcore-gb200]
    m.moe_router_padding_for_quantization = True  # [mcore-gb200]
    m.moe_router_fusion = True  # [mcore-gb200]
    m.moe_permute_fusion = True  # [mcore-gb200]
    m.moe_grouped_gemm = True  # [mcore-gb200]
    m.moe_router_force_load_balancing = True  # [mcore-gb200] (benchmark only)
    m.moe_token_dispatcher_type = "flex"  # [mcore-gb200]
    m.moe_flex_dispatcher_backend = "hybridep"  # [mcore-gb200]
    m.moe_hybridep_num_sms = 32  # [mcore-gb200]
    m.cross_entropy_loss_fusion = True  # [mcore-gb200]
    m.cross_entropy_fusion_impl = "te"  # [mcore-gb200]
    # [mcore-gb200]'s --use-flash-attn only switches Megatron's legacy attention; with TE, "auto" picks cuDNN
    # fused attention (NVTE_FUSED_ATTN=1 below), as the seed's launch does.
    m.attention_backend = "auto"  # [mcore-gb200]: --use-flash-attn, as explained above
    m.recompute_granularity = "selective"  # [mcore-gb200]
    m.recompute_modules = ["moe_act", "mlp"]  # [mcore-gb200]
    m.cuda_graph_impl = "transformer_engine"  # [mcore-gb200]
    m.cuda_graph_scope = ["attn", "moe_router", "moe_preprocess"]  # [mcore-gb200]
    m.use_te_rng_tracker = True  # [mcore-gb200]: --te-rng-tracker

    t = r.train
    t.micro_batch_size = 1  # [mcore-gb200]
    t.global_batch_size = 2048  # [mcore-gb200]
    t.train_iters = None  # [mcore-gb200] counts samples (--train-samples), not iterations
    t.train_samples = 585937500  # [mcore-gb200]
    t.exit_duration_in_mins = 220  # [mcore-gb200]
    t.check_for_nan_in_loss_and_grad = False  # [mcore-gb200]: --no-check-for-nan-in-loss-and-grad
    t.manual_gc = True  # [mcore-gb200]
    t.manual_gc_interval = 10  # [mcore-gb200]
    t.eval_iters = 32  # [mcore-gb200]
    t.eval_interval = 200  # [mcore-gb200]
    t.distributed_timeout_minutes = 60  # [mcore-gb200]
    t.enable_experimental = True  # [mcore-gb200]

    o = r.optimizer
    o.lr = 3.9e-6  # [mcore-gb200]
    o.min_lr = 3.9e-7  # [mcore-gb200]
    o.weight_decay = 0.1  # [mcore-gb200]
    o.adam_beta1 = 0.9  # [mcore-gb200]
    o.adam_beta2 = 0.95  # [mcore-gb200]
    o.clip_grad = 1.0  # [mcore-gb200]
    o.use_distributed_optimizer = True  # [mcore-gb200]
    o.use_precision_aware_optimizer = True  # [mcore-gb200]
    o.main_grads_dtype = "fp32"  # [mcore-gb200]
    o.main_params_dtype = "fp32"  # [mcore-gb200]
    o.exp_avg_dtype = "bf16"  # [mcore-gb200]
    o.exp_avg_sq_dtype = "bf16"  # [mcore-gb200]

    s = r.scheduler
    s.lr_decay_style = "cosine"  # [mcore-gb200]
    s.lr_warmup_init = 3.9e-7  # [mcore-gb200]
    s.lr_warmup_samples = 1536000  # [mcore-gb200]
    s.lr_decay_samples = 584765624  # [mcore-gb200]

    d = r.dataset
    d.mock = False  # [mcore-gb200] trains on a real corpus: give dataset.data_paths
    d.split = "99,1,0"  # [mcore-gb200]
    d.mmap_bin_files = False  # [mcore-gb200]: --no-mmap-bin-files
    d.create_attention_mask = False  # [mcore-gb200]: --no-create-attention-mask-in-dataloader
    d.num_workers = 6  # [mcore-gb200]
    r.tokenizer.tokenizer_type = "HuggingFaceTokenizer"  # [mcore-gb200]
    r.tokenizer.tokenizer_model = "unsloth/DeepSeek-V3"  # [mcore-gb200]

    c = r.checkpoint
    c.save_interval = 500  # [mcore-gb200]
    c.save_optim = False  # [mcore-gb200]: --no-save-optim
    c.load_optim = False  # [mcore-gb200]: --no-load-optim
    c.load_rng = False  # [mcore-gb200]: --no-load-rng
    c.dist_ckpt_strictness = "log_all"  # [mcore-gb200]

    lg = r.logger
    lg.log_interval = 1  # [mcore-gb200]
    lg.log_throughput = True  # [mcore-gb200]
    lg.log_timers_to_tensorboard = True  # [mcore-gb200]
    lg.log_memory_to_tensorboard = True  # [mcore-gb200]
    lg.log_validation_ppl_to_tensorboard = True  # [mcore-gb200]
    lg.logging_level = 40  # [mcore-gb200]
    lg.wandb_project = "deepseek-v3-benchmarking-v0.15"  # [mcore-gb200]
    lg.wandb_exp_name = "DeepSeek-V3-TP1PP8EP32CP1VPP4-MBS1GBS2048-v0.15"  # [mcore-gb200]

    mp = r.mixed_precision
    mp.bf16 = True  # [mcore-gb200]
    mp.fp8_recipe = "mxfp8"  # [mcore-gb200]
    mp.fp8_format = "e4m3"  # [mcore-gb200]
    mp.fp8_param_gather = True  # [mcore-gb200]
    mp.reuse_grad_buf_for_mxfp8_param_ag = True  # [mcore-gb200]

    r.comm_overlap.overlap_grad_reduce = True  # [mcore-gb200]
    r.comm_overlap.overlap_param_gather = True  # [mcore-gb200]

    r.env_vars = {  # [mcore-gb200]
        **MCORE_DSV3_ENV_VARS,
        "NVTE_FWD_LAYERNORM_SM_MARGIN": "0",  # [mcore-gb200]: norms may use every SM
        "NVTE_BWD_LAYERNORM_SM_MARGIN": "0",  # [mcore-gb200]
        "NVLINK_DOMAIN_SIZE": "72",  # [mcore-gb200]: HybridEP sees the whole NVL72 rack
        "NCCL_GRAPH_REGISTER": "0",  # [mcore-gb200]: no NCCL buffer registration under CUDA graphs
    }
    return task


@registered
def gb200_bf16_256gpu() -> fdl.Partial:
    """TorchTitan's GB200 BF16 baseline ([titan-dsv3]): 256 GPUs, DP32 EP32 PP8, local batch 16, 200 steps."""
    return torchtitan_bf16("gb200_bf16_256gpu", gpu_type="gb200")
