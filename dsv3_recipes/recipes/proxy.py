"""Proxy recipes: the DSV3 architecture at sizes that train on 1-8 GPUs, with mock data by default.

``proxy_1gpu_stock`` is Megatron-Bridge 0.6.2's stock DSV3 H100 recipe shrunk to one GPU (TP/PP/EP 1,
alltoall dispatcher, no gradient-accumulation fusion, MBS1 GBS8): the baseline every speed-up is
measured against. ``proxy_1gpu`` starts from it and applies the settings measured to be fastest.
"""

from __future__ import annotations

import fiddle as fdl

from dsv3_recipes.recipe import hardware, models, rules
from dsv3_recipes.recipe.schema import LaunchConfig
from dsv3_recipes.recipes.common import BRIDGE_ENV_VARS, pretrain_task, recipe_config, registered

# What the planner counts for proxy_1gpu's step without recompute on its most loaded rank (75.7 GiB).
NO_RECOMPUTE_GIB = 76
# What proxy_1gpu recomputes on a GPU with less memory than that (benchmarks/proxy_1gpu_tuning.md).
RECOMPUTE_MODULES = ("moe_act", "layernorm", "mla_up_proj")


def _proxy(name: str, model: fdl.Config, gpu_type: str, gpus: int) -> fdl.Partial:
    """A proxy with Bridge's stock DSV3 settings (recipes/deepseek/h100/deepseek_v3.py) at this size."""
    r = recipe_config(
        name, model, fdl.Config(LaunchConfig, gpu_type=gpu_type, num_nodes=1, gpus_per_node=gpus)
    )
    r.model.moe_token_dispatcher_type = "alltoall"  # [bridge-dsv3], before its HybridEP switch
    r.model.moe_shared_expert_overlap = True  # [bridge-dsv3]
    # Bridge's stock recipe turns it on; off until TE's GEMM in apex's place (train.wgrad_fusion; no apex
    # on the lent GPU image) wins side by side (benchmarks/README.md, "Side by side").
    r.model.gradient_accumulation_fusion = False
    r.train.micro_batch_size = 1  # [bridge-dsv3]
    r.train.global_batch_size = 8 * gpus  # 8 micro-batches per GPU: pipeline bubbles stay small
    r.train.train_iters = 50  # long enough for a steady tokens/s after the first steps
    r.train.manual_gc_interval = 5  # [bridge-dsv3]
    # [bridge-dsv3]: precision-aware optimizer with BF16 gradients and moments, FP32 master weights.
    r.optimizer.use_precision_aware_optimizer = True
    r.optimizer.main_grads_dtype = "bf16"
    r.optimizer.exp_avg_dtype = "bf16"
    r.optimizer.exp_avg_sq_dtype = "bf16"
    r.optimizer.lr = 3e-4  # [bridge-dsv3]
    r.optimizer.min_lr = 3e-5  # [bridge-dsv3]
    r.scheduler.lr_warmup_iters = 10  # a fifth of the 50 steps ([bridge-dsv3] warms up 2000 of 1M)
    r.env_vars = dict(BRIDGE_ENV_VARS)  # [bridge-dsv3]
    return pretrain_task(r)


@registered
def proxy_1gpu_stock(gpu_type: str = "h100") -> fdl.Partial:
    """3.57B proxy on one GPU with Bridge's stock DSV3 settings (the speed-up baseline)."""
    return _proxy("proxy_1gpu_stock", models.proxy_1gpu(), gpu_type=gpu_type, gpus=1)


@registered
def proxy_1gpu(gpu_type: str = "h100") -> fdl.Partial:
    """3.57B proxy on one GPU, with the fastest settings measured there (benchmarks/proxy_1gpu_tuning.md).

    ``gpu_type`` (``launch.gpu_type=`` on the CLI) picks what depends on the GPU: selective recompute
    only where the step does not fit without it, by the planner's figure for it (``NO_RECOMPUTE_GIB``;
    tests/test_plan.py keeps the two in step). No GPU the project knows needs it now: the smallest, the
    80 GB H100, has 79.6 GiB.
    """
    task = proxy_1gpu_stock(gpu_type)
    r = task.recipe
    r.name = "proxy_1gpu"  # the tuned variant of the stock proxy
    # One micro-batch per step: 8x fewer kernel launches and 8x larger expert GEMMs (2.5x alone).
    r.train.micro_batch_size = 8
    # With EP=1 the all-gather dispatcher skips all-to-all's host-side split bookkeeping.
    r.model.moe_token_dispatcher_type = "allgather"
    r.model.moe_shared_expert_overlap = False  # no EP communication to hide the shared expert behind
    r.model.apply_rope_fusion = True  # Megatron's fused MLA RoPE kernels
    r.train.check_for_nan_in_loss_and_grad = False  # a host sync per step; the loss is logged anyway
    # Bridge's 5 spends a 0.6-0.7 s gc.collect() per 5 steps of ~0.5 s: 50 ran 1.21x and 1.37x faster on
    # H200 (benchmarks/results/h200_text_gc_*); TorchTitan collects every 50 too.
    r.train.manual_gc_interval = 50
    # TE runs each layer's 64 experts in one cuBLASLt grouped GEMM (13.4+; train.grouped_gemm hands it the
    # counts on the GPU) instead of a launch and its host work per expert: 1.16x and 1.08x without MTP on
    # an H100, two calls (benchmarks/results/side_by_side/2026-12-07-h100-grouped-gemm-*).
    r.env_vars[rules.TE_GROUPED_GEMM] = "1"
    # One GPU is one data-parallel rank: the overlapped hooks ran a parameter gather and a gradient reduce
    # per bucket (73 + 73 a step, ~0.3 ms of host each) on a group of one, while the forward waits for the
    # host; without them Megatron makes one bucket. 1.06x without MTP side by side on an H100, 1.03x across
    # calls (benchmarks/results/side_by_side/2026-12-07-h100-overlap-{d,e}).
    r.comm_overlap.overlap_grad_reduce = False
    r.comm_overlap.overlap_param_gather = False
    # Recompute only where MBS 8 does not fit without it. On an 80 GB H100 it fits (70.4 GiB allocated,
    # 70.7 reserved), and without the recompute of moe_act/layernorm/mla_up_proj it ran 85,321 and 85,721
    # tokens/s against 82,729 with it, one call (benchmarks/results/side_by_side/2026-12-07-h100-recompute-j).
    if hardware.gpu(gpu_type).memory_gib < NO_RECOMPUTE_GIB:
        r.model.recompute_granularity = "selective"
        r.model.recompute_modules = list(RECOMPUTE_MODULES)
    return task


@registered
def proxy_2gpu_ep2() -> fdl.Partial:
    """16-layer proxy on 2 GPUs, experts split over EP=2."""
    task = _proxy("proxy_2gpu_ep2", models.proxy_multi_gpu(), gpu_type="h200", gpus=2)
    task.recipe.model.expert_model_parallel_size = 2  # 32 experts per GPU
    return task


@registered
def proxy_2gpu_pp2() -> fdl.Partial:
    """16-layer proxy on 2 GPUs, two pipeline stages with MTP next to the loss."""
    task = _proxy("proxy_2gpu_pp2", models.proxy_multi_gpu(), gpu_type="h200", gpus=2)
    task.recipe.model.pipeline_model_parallel_size = 2  # 8 layers per stage
    task.recipe.model.pipeline_model_parallel_layout = "Et*8|t*8mL"  # MTP next to the loss
    return task


@registered
def proxy_4gpu_ep4() -> fdl.Partial:
    """16-layer proxy on 4 GPUs, experts split over EP=4."""
    task = _proxy("proxy_4gpu_ep4", models.proxy_multi_gpu(), gpu_type="h200", gpus=4)
    task.recipe.model.expert_model_parallel_size = 4  # 16 experts per GPU
    return task


@registered
def proxy_8gpu_ep8() -> fdl.Partial:
    """One-node proxy (128 experts top-8) with EP=8: all-to-all across the whole node."""
    task = _proxy("proxy_8gpu_ep8", models.proxy_node(), gpu_type="h200", gpus=8)
    task.recipe.model.expert_model_parallel_size = 8  # 16 experts per GPU, all-to-all over the node
    return task


@registered
def proxy_8gpu_pp2ep4() -> fdl.Partial:
    """One-node proxy with PP2 x EP4 and a 671B-style layout string."""
    task = _proxy("proxy_8gpu_pp2ep4", models.proxy_node(), gpu_type="h200", gpus=8)
    m = task.recipe.model
    m.pipeline_model_parallel_size = 2  # two stages of 8 layers
    m.expert_model_parallel_size = 4  # x PP2 = the 8 GPUs
    m.pipeline_model_parallel_layout = "Et*8|t*8mL"  # the 671B layouts' shape: MTP with the loss
    return task
