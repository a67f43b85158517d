"""H100 recipes (8 GPUs per node, HGX, InfiniBand between nodes)."""

from __future__ import annotations

import fiddle as fdl

from dsv3_recipes.recipe.schema import Recipe
from dsv3_recipes.recipes.common import BRIDGE_ENV_VARS, MCORE_DSV3_ENV_VARS, dsv3_671b, registered
from dsv3_recipes.recipes.torchtitan import torchtitan_bf16


def h100_1024gpu_layout(r: fdl.Config[Recipe]) -> None:
    """The H100 guide's 1024-GPU layout ([moe-zoo] run.sh, "best config on 1024 H100 GPUs"): TP2 PP8
    VPP4 EP64 with DeepEP, its recompute and the EP all-to-all overlap (A2A_OVERLAP=1)."""
    m = r.model
    m.tensor_model_parallel_size = 2  # [moe-zoo] run.sh: TP=2
    m.sequence_parallel = True  # [moe-zoo] DeepSeek-V3.yaml; required with TP > 1 and MoE
    m.pipeline_model_parallel_size = 8  # [moe-zoo] run.sh: PP=8
    m.virtual_pipeline_model_parallel_size = 4  # [moe-zoo] run.sh: VPP=4 (32 layout stages / PP8)
    m.pipeline_model_parallel_layout = "Et|(tt|)*30mL"  # [mcore-h100]
    m.context_parallel_size = 1  # [moe-zoo] runtime.conf: CP 1
    m.expert_model_parallel_size = 64  # [moe-zoo] run.sh: EP=64
    m.expert_tensor_parallel_size = 1  # [moe-zoo] DeepSeek-V3.yaml
    m.moe_token_dispatcher_type = "flex"  # [mcore-h100]: DeepEP
    m.moe_flex_dispatcher_backend = "deepep"  # [mcore-h100]: --moe-enable-deepep
    m.recompute_granularity = "selective"  # [mcore-h100]
    m.recompute_modules = ["mla_up_proj", "mlp"]  # [mcore-h100]
    r.comm_overlap.overlap_moe_expert_parallel_comm = True  # [mcore-h100]: EP A2A overlap
    r.comm_overlap.delay_wgrad_compute = True  # [mcore-h100]
    r.launch.bindpcie = True  # [mcore-h100]: "Optional, Recommended"
    r.env_vars = {  # [moe-zoo]
        **MCORE_DSV3_ENV_VARS,
        "TORCH_NCCL_AVOID_RECORD_STREAMS": "0",  # [moe-zoo] DeepSeek-V3.yaml ENV_VARS
        # [moe-zoo] sbatch_benchmarking.sh with A2A_OVERLAP=1: many streams for the overlapped
        # all-to-all, and SMs left free for it by the norms.
        "CUDA_DEVICE_MAX_CONNECTIONS": "32",
        "NVTE_FWD_LAYERNORM_SM_MARGIN": "20",
        "NVTE_BWD_LAYERNORM_SM_MARGIN": "20",
    }


@registered
def h100_fp8_blockwise() -> fdl.Partial:
    """Megatron-Core's H100 DSV3 guide ([mcore-h100]): DeepSeek's blockwise FP8 recipe with DeepEP.

    The guide names the optimisations; its launch script ([moe-zoo] run.sh) gives the cluster:
    128 nodes, TP2 PP8 VPP4 EP64, GBS 8192. Megatron-Bridge 0.6.2's own 1024xH100 DSV3 perf recipes
    ([bridge-perf]) differ: GBS 16384, VP2 for blockwise FP8, TORCH_NCCL_AVOID_RECORD_STREAMS=1 and
    NVTE_ALLOW_NONDETERMINISTIC_ALGO=0; this recipe follows the guide's launch, not Bridge's.
    """
    task = dsv3_671b("h100_fp8_blockwise", gpu_type="h100", num_nodes=128, gpus_per_node=8)
    r = task.recipe
    h100_1024gpu_layout(r)

    m = r.model
    m.mtp_num_layers = 1  # [mcore-h100]
    m.mtp_loss_scaling_factor = 0.1  # [mcore-h100]
    m.moe_router_dtype = "fp32"  # [mcore-h100]
    m.moe_permute_fusion = True  # [mcore-h100]
    m.moe_grouped_gemm = True  # [mcore-h100]
    m.moe_router_fusion = True  # [mcore-h100]
    m.cross_entropy_loss_fusion = True  # [mcore-h100]
    m.cross_entropy_fusion_impl = "te"  # [mcore-h100]
    m.apply_rope_fusion = True  # [mcore-h100]: MLA RoPE fusion (experimental)
    m.moe_router_padding_for_quantization = True  # [mcore-h100]: --moe-router-padding-for-fp8
    m.moe_router_force_load_balancing = True  # [mcore-h100] (benchmark only)

    r.train.global_batch_size = 8192  # [moe-zoo] run.sh: GBS=8192
    r.train.micro_batch_size = 1  # [moe-zoo] run.sh: MBS=1
    r.train.manual_gc = True  # [mcore-h100]
    r.train.manual_gc_interval = 10  # [mcore-h100]
    r.train.enable_experimental = True  # [mcore-h100]

    mp = r.mixed_precision
    mp.fp8_recipe = "blockwise"  # [mcore-h100]
    mp.fp8_format = "e4m3"  # [mcore-h100]
    mp.fp8_param_gather = True  # [mcore-h100]

    o = r.optimizer
    o.use_precision_aware_optimizer = True  # [mcore-h100]
    o.exp_avg_dtype = "bf16"  # [mcore-h100]
    o.exp_avg_sq_dtype = "bf16"  # [mcore-h100]
    return task


@registered
def bridge_default_1024gpu() -> fdl.Partial:
    """Megatron-Bridge's DSV3 pretraining recipe ([bridge-dsv3-doc]): TP2 PP16 EP64 on 128 nodes, MTP 1.

    Where Bridge 0.6.2's recipe code ([bridge-dsv3]: deepseek_v3_pretrain_1024gpu_h100_bf16_config)
    disagrees with its docs page, this follows the code, because the code is what Bridge runs: no
    recompute (the page says "Selective Recomputation: Enabled by default"; the code sets
    recompute_granularity=None and warns that "selective" with no modules makes Megatron-Core recompute
    core_attn in every layer). One substitution: the code then switches to the flex dispatcher with
    HybridEP on Hopper (apply_flex_dispatcher_backend), which the project's H100 image does not build
    (platforms/h100.args: main-line DeepEP), so this recipe keeps the code's all-to-all dispatcher
    and its shared-expert overlap, and leaves out the HybridEP environment nothing would read.
    """
    task = dsv3_671b("bridge_default_1024gpu", gpu_type="h100", num_nodes=128, gpus_per_node=8)
    r = task.recipe
    m = r.model
    m.tensor_model_parallel_size = 2  # [bridge-dsv3-doc]
    m.pipeline_model_parallel_size = 16  # [bridge-dsv3-doc]
    m.virtual_pipeline_model_parallel_size = None  # [bridge-dsv3-doc]: VP None
    m.expert_model_parallel_size = 64  # [bridge-dsv3-doc]
    # [bridge-dsv3]'s asymmetric PP16 layout: embedding + 4 layers, 14 x 4 layers, 1 layer + MTP + loss.
    m.pipeline_model_parallel_layout = "Et*4|(t*4|)*14tmL"
    m.sequence_parallel = True  # [bridge-dsv3-doc]: "Enabled by default"
    m.mtp_num_layers = 1  # [bridge-dsv3-doc]
    m.mtp_loss_scaling_factor = 0.1  # [bridge-dsv3-doc]
    m.moe_permute_fusion = True  # [bridge-dsv3-doc]
    m.recompute_granularity = None  # [bridge-dsv3]: no recompute (see the docstring)
    m.moe_token_dispatcher_type = "alltoall"  # [bridge-dsv3], before its HybridEP switch (docstring)
    m.moe_shared_expert_overlap = True  # [bridge-dsv3]

    r.train.global_batch_size = 4096  # [bridge-dsv3-doc]
    r.train.micro_batch_size = 1  # [bridge-dsv3]
    r.train.train_iters = 500_000  # [bridge-dsv3-doc] pre-training example

    o = r.optimizer
    o.use_precision_aware_optimizer = True  # [bridge-dsv3-doc]: "FP32 master weights with BF16 ..."
    o.main_params_dtype = "fp32"  # [bridge-dsv3-doc]
    o.main_grads_dtype = "bf16"  # [bridge-dsv3-doc]
    o.exp_avg_dtype = "bf16"  # [bridge-dsv3-doc]
    o.exp_avg_sq_dtype = "bf16"  # [bridge-dsv3-doc]
    o.lr = 3e-4  # [bridge-dsv3]
    o.min_lr = 3e-5  # [bridge-dsv3]
    r.scheduler.lr_warmup_iters = 2000  # [bridge-dsv3]
    r.train.manual_gc_interval = 5  # [bridge-dsv3]
    r.train.eval_interval = 2000  # [bridge-dsv3]
    r.train.eval_iters = 32  # [bridge-dsv3]
    r.checkpoint.save_interval = 2000  # [bridge-dsv3]
    r.env_vars = {  # [bridge-dsv3]
        **BRIDGE_ENV_VARS,
        "NVTE_FWD_LAYERNORM_SM_MARGIN": "20",  # [bridge-dsv3]: leave SMs for overlapped communication
        "NVTE_BWD_LAYERNORM_SM_MARGIN": "20",  # [bridge-dsv3]
    }
    return task


@registered
def h100_bf16_512gpu() -> fdl.Partial:
    """TorchTitan's H100 BF16 baseline ([titan-dsv3]): 512 GPUs, DP64 EP32 PP8, local batch 16, 200 steps."""
    return torchtitan_bf16("h100_bf16_512gpu", gpu_type="h100")
