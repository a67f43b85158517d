"""H100 recipes (8 GPUs per node, HGX, InfiniBand between nodes)."""

from __future__ import annotations

import nemo_run as run

from dsv3_recipes.recipes.common import MCORE_DSV3_ENV_VARS, dsv3_671b
from dsv3_recipes.recipes.torchtitan import torchtitan_bf16


def h100_fp8_blockwise() -> run.Partial:
    """Megatron-Core's H100 DSV3 guide (seed 001): DeepSeek's blockwise FP8 recipe with DeepEP.

    Seed 001 names the optimisations but not the cluster; the parallel sizes, GBS and node count are
    those of Megatron-Bridge's 1024xH100 DSV3 benchmark, which uses the same "Et|(tt|)*30mL" layout.
    """
    task = dsv3_671b("h100_fp8_blockwise", gpu_type="h100", num_nodes=128, gpus_per_node=8)
    r = task.recipe
    r.launch.bindpcie = True  # seed 001: "Optional, Recommended"

    m = r.model
    m.tensor_model_parallel_size = 2  # Bridge 1024xH100 benchmark
    m.sequence_parallel = True  # required with TP > 1 and MoE
    m.pipeline_model_parallel_size = 8  # Bridge 1024xH100 benchmark
    m.virtual_pipeline_model_parallel_size = 4  # 32 layout stages / PP8
    m.pipeline_model_parallel_layout = "Et|(tt|)*30mL"  # seed 001
    m.expert_model_parallel_size = 64  # Bridge 1024xH100 benchmark
    m.mtp_num_layers = 1  # seed 001
    m.mtp_loss_scaling_factor = 0.1  # seed 001
    m.moe_router_dtype = "fp32"  # seed 001
    m.moe_permute_fusion = True  # seed 001
    m.moe_grouped_gemm = True  # seed 001
    m.moe_router_fusion = True  # seed 001
    m.moe_token_dispatcher_type = "flex"  # seed 001
    m.moe_flex_dispatcher_backend = "deepep"  # seed 001: --moe-enable-deepep
    m.recompute_granularity = "selective"  # seed 001
    m.recompute_modules = ["mla_up_proj", "mlp"]  # seed 001
    m.cross_entropy_loss_fusion = True  # seed 001
    m.cross_entropy_fusion_impl = "te"  # seed 001
    m.apply_rope_fusion = True  # seed 001: MLA RoPE fusion (experimental)
    m.moe_router_padding_for_quantization = True  # seed 001: --moe-router-padding-for-fp8
    m.moe_router_force_load_balancing = True  # seed 001 (benchmark only)

    r.train.global_batch_size = 8192  # Bridge 1024xH100 benchmark
    r.train.micro_batch_size = 1  # Bridge 1024xH100 benchmark
    r.train.manual_gc = True  # seed 001
    r.train.manual_gc_interval = 10  # seed 001
    r.train.enable_experimental = True  # seed 001

    mp = r.mixed_precision
    mp.fp8_recipe = "blockwise"  # seed 001
    mp.fp8_format = "e4m3"  # seed 001
    mp.fp8_param_gather = True  # seed 001

    o = r.optimizer
    o.use_precision_aware_optimizer = True  # seed 001
    o.exp_avg_dtype = "bf16"  # seed 001
    o.exp_avg_sq_dtype = "bf16"  # seed 001

    r.comm_overlap.overlap_moe_expert_parallel_comm = True  # seed 001: EP A2A overlap
    r.comm_overlap.delay_wgrad_compute = True  # seed 001
    # seed 001 launches through Megatron-LM's DeepSeek-V3 run.sh, which sets these.
    r.env_vars = {**MCORE_DSV3_ENV_VARS, "TORCH_NCCL_AVOID_RECORD_STREAMS": "0"}
    return task


def bridge_default_1024gpu() -> run.Partial:
    """Megatron-Bridge's DSV3 pretraining recipe (seed 004): TP2 PP16 EP64 on 128 nodes, MTP 1."""
    task = dsv3_671b("bridge_default_1024gpu", gpu_type="h100", num_nodes=128, gpus_per_node=8)
    r = task.recipe
    m = r.model
    m.tensor_model_parallel_size = 2  # seed 004
    m.pipeline_model_parallel_size = 16  # seed 004
    m.virtual_pipeline_model_parallel_size = None  # seed 004: VP None
    m.expert_model_parallel_size = 64  # seed 004
    # Bridge's asymmetric PP16 layout: embedding + 4 layers, 14 x 4 layers, 1 layer + MTP + loss.
    m.pipeline_model_parallel_layout = "Et*4|(t*4|)*14tmL"
    m.sequence_parallel = True  # seed 004: "Enabled by default"
    m.mtp_num_layers = 1  # seed 004
    m.mtp_loss_scaling_factor = 0.1  # seed 004
    m.moe_permute_fusion = True  # seed 004
    m.recompute_granularity = "selective"  # seed 004: "Enabled by default"
    m.recompute_modules = ["core_attn"]  # Megatron-Core's default selective module

    r.train.global_batch_size = 4096  # seed 004
    r.train.micro_batch_size = 1  # Bridge recipe
    r.train.train_iters = 500_000  # seed 004 example

    o = r.optimizer
    o.use_precision_aware_optimizer = True  # seed 004: "FP32 master weights with BF16 gradients and states"
    o.main_params_dtype = "fp32"  # seed 004
    o.main_grads_dtype = "bf16"  # seed 004
    o.exp_avg_dtype = "bf16"  # seed 004
    o.exp_avg_sq_dtype = "bf16"  # seed 004
    o.lr = 3e-4  # Bridge recipe
    o.min_lr = 3e-5  # Bridge recipe
    r.scheduler.lr_warmup_iters = 2000  # Bridge recipe
    r.train.manual_gc_interval = 5  # Bridge recipe
    r.train.eval_interval = 2000  # Bridge recipe
    r.train.eval_iters = 32  # Bridge recipe
    r.checkpoint.save_interval = 2000  # Bridge recipe
    r.env_vars = {
        "NCCL_GRAPH_REGISTER": "0",  # Bridge: expandable allocator, no NCCL user-buffer registration
        "NCCL_NVLS_ENABLE": "0",  # Bridge: no NVLS user buffers
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",  # Bridge: grow allocator segments
        "TORCH_NCCL_AVOID_RECORD_STREAMS": "1",  # Bridge: consistent NCCL stream handling
        "TORCH_NCCL_HIGH_PRIORITY": "1",  # Bridge: NCCL streams at high priority
        "NVTE_FWD_LAYERNORM_SM_MARGIN": "20",  # Bridge: leave SMs for overlapped communication
        "NVTE_BWD_LAYERNORM_SM_MARGIN": "20",  # Bridge
    }
    return task


def h100_bf16_512gpu() -> run.Partial:
    """TorchTitan's H100 BF16 baseline (seed 003): 512 GPUs, DP64 EP32 PP8, local batch 16, 200 steps."""
    return torchtitan_bf16("h100_bf16_512gpu", gpu_type="h100")
