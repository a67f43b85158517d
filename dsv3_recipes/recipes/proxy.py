"""Proxy recipes: the DSV3 architecture at sizes that train on 1-8 GPUs, with mock data by default.

``proxy_1gpu_stock`` is Megatron-Bridge 0.6.2's stock DSV3 H100 recipe shrunk to one GPU (TP/PP/EP 1,
alltoall dispatcher, no gradient-accumulation fusion, MBS1 GBS8): the baseline every speed-up is
measured against. ``proxy_1gpu`` starts from it and applies the settings measured to be fastest.
"""

from __future__ import annotations

import copy

import fiddle as fdl
import nemo_run as run

from dsv3_recipes import models
from dsv3_recipes.recipe import LaunchConfig, RecipeError
from dsv3_recipes.recipes.common import pretrain_task, recipe_config

# What Bridge's recipes export on every launch (COMMON_RECIPE_ENV_VARS in Megatron-Bridge 0.6.2).
BRIDGE_ENV_VARS = {
    "NCCL_GRAPH_REGISTER": "0",  # expandable allocator, no NCCL user-buffer registration
    "NCCL_NVLS_ENABLE": "0",  # no NVLink SHARP buffers (and no multicast objects on shared hosts)
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",  # less fragmentation with MoE shapes
    "TORCH_NCCL_AVOID_RECORD_STREAMS": "1",  # free NCCL buffers without record_stream overhead
    "TORCH_NCCL_HIGH_PRIORITY": "1",  # NCCL streams ahead of compute
}


def _proxy(name: str, model: run.Config, gpu_type: str, gpus: int) -> run.Partial:
    """A proxy with Bridge's stock DSV3 settings (recipes/deepseek/h100/deepseek_v3.py) at this size."""
    r = recipe_config(
        name, model, run.Config(LaunchConfig, gpu_type=gpu_type, num_nodes=1, gpus_per_node=gpus)
    )
    r.model.moe_token_dispatcher_type = "alltoall"
    r.model.moe_shared_expert_overlap = True
    r.model.gradient_accumulation_fusion = False  # needs apex, absent from the lent GPU image
    r.train.micro_batch_size = 1
    r.train.global_batch_size = 8 * gpus
    r.train.train_iters = 50
    r.train.manual_gc_interval = 5  # Bridge
    r.optimizer.use_precision_aware_optimizer = True  # Bridge: bf16 grads and moments
    r.optimizer.main_grads_dtype = "bf16"
    r.optimizer.exp_avg_dtype = "bf16"
    r.optimizer.exp_avg_sq_dtype = "bf16"
    r.optimizer.lr = 3e-4
    r.optimizer.min_lr = 3e-5
    r.scheduler.lr_warmup_iters = 10
    r.env_vars = dict(BRIDGE_ENV_VARS)
    return pretrain_task(r)


def proxy_1gpu_stock(gpu_type: str = "h100") -> run.Partial:
    """3.53B proxy on one GPU with Bridge's stock DSV3 settings (the speed-up baseline)."""
    return _proxy("proxy_1gpu_stock", models.proxy_1gpu(), gpu_type=gpu_type, gpus=1)


def proxy_1gpu(gpu_type: str = "h100") -> run.Partial:
    """3.53B proxy on one GPU, with the fastest settings measured there (benchmarks/proxy_1gpu_tuning.md).

    ``gpu_type`` (``launch.gpu_type=`` on the CLI) picks what depends on the GPU: selective recompute
    only where the planner says the step does not fit without it (80 GB H100: yes; 141 GB H200: no).
    """
    task = proxy_1gpu_stock(gpu_type)
    r = task.recipe
    r.name = "proxy_1gpu"
    # One micro-batch per step: 8x fewer kernel launches and 8x larger expert GEMMs (2.5x alone).
    r.train.micro_batch_size = 8
    # With EP=1 the all-gather dispatcher skips all-to-all's host-side split bookkeeping.
    r.model.moe_token_dispatcher_type = "allgather"
    r.model.moe_shared_expert_overlap = False  # no EP communication to hide the shared expert behind
    r.model.apply_rope_fusion = True  # Megatron's fused MLA RoPE kernels
    r.train.check_for_nan_in_loss_and_grad = False  # a host sync per step; the loss is logged anyway
    if not _fits(task):
        # MBS 8 fits in 80 GB only when these cheap-to-recompute activations are dropped.
        r.model.recompute_granularity = "selective"
        r.model.recompute_modules = ["moe_act", "layernorm", "mla_up_proj"]
    return task


def _fits(task: run.Partial) -> bool:
    """The planner's verdict on the task's memory (the planner is within 2% of the measured peaks)."""
    from dsv3_recipes.plan import plan

    try:
        plan(fdl.build(copy.deepcopy(task.recipe)))
    except RecipeError:
        return False
    return True


def proxy_2gpu_ep2() -> run.Partial:
    """16-layer proxy on 2 GPUs, experts split over EP=2."""
    task = _proxy("proxy_2gpu_ep2", models.proxy_multi_gpu(), gpu_type="h200", gpus=2)
    task.recipe.model.expert_model_parallel_size = 2
    return task


def proxy_2gpu_pp2() -> run.Partial:
    """16-layer proxy on 2 GPUs, two pipeline stages with MTP next to the loss."""
    task = _proxy("proxy_2gpu_pp2", models.proxy_multi_gpu(), gpu_type="h200", gpus=2)
    task.recipe.model.pipeline_model_parallel_size = 2
    task.recipe.model.pipeline_model_parallel_layout = "Et*8|t*8mL"
    return task


def proxy_4gpu_ep4() -> run.Partial:
    """16-layer proxy on 4 GPUs, experts split over EP=4."""
    task = _proxy("proxy_4gpu_ep4", models.proxy_multi_gpu(), gpu_type="h200", gpus=4)
    task.recipe.model.expert_model_parallel_size = 4
    return task


def proxy_8gpu_ep8() -> run.Partial:
    """One-node proxy (128 experts top-8) with EP=8: all-to-all across the whole node."""
    task = _proxy("proxy_8gpu_ep8", models.proxy_node(), gpu_type="h200", gpus=8)
    task.recipe.model.expert_model_parallel_size = 8
    return task


def proxy_8gpu_pp2ep4() -> run.Partial:
    """One-node proxy with PP2 x EP4 and a 671B-style layout string."""
    task = _proxy("proxy_8gpu_pp2ep4", models.proxy_node(), gpu_type="h200", gpus=8)
    m = task.recipe.model
    m.pipeline_model_parallel_size = 2
    m.expert_model_parallel_size = 4
    m.pipeline_model_parallel_layout = "Et*8|t*8mL"
    return task
