"""The per-rank memory model against bytes worked out by hand from Megatron-Core's allocations."""

import dataclasses
import json
from pathlib import Path

import fiddle as fdl
import pytest

from dsv3_recipes.cli import recipe_of_command
from dsv3_recipes.launch.submit import build_task, recipe_of
from dsv3_recipes.plan import flops, memory
from dsv3_recipes.plan.preflight import plan
from dsv3_recipes.recipe import models
from dsv3_recipes.recipe.layout import pipeline_stages, stages_of_rank
from dsv3_recipes.recipe.parallel import parallel_sizes
from dsv3_recipes.recipe.schema import LaunchConfig, OptimizerConfig, Recipe, TrainConfig
from dsv3_recipes.report.logs import parse_log

SEQ = 4096
# The 1-GPU proxy: hidden 2048, 16 heads, q/kv LoRA 768/512, 64 experts top-6 of width 1024.
H, HEADS, Q_LORA, KV_LORA, QK, ROPE, V = 2048, 16, 768, 512, 128, 64, 128
TOPK, EXPERTS, F_EXPERT, F_SHARED, F_DENSE = 6, 64, 1024, 1024, 8192


def proxy_recipe(optimizer: OptimizerConfig | None = None, **model_overrides) -> Recipe:
    model = dataclasses.replace(fdl.build(models.proxy_1gpu()), **model_overrides)
    return Recipe(
        name="proxy",
        model=model,
        train=TrainConfig(micro_batch_size=1, global_batch_size=8),
        optimizer=optimizer or OptimizerConfig(),
        launch=LaunchConfig(gpu_type="h100", num_nodes=1, gpus_per_node=1),
    )


def one_rank(recipe: Recipe, pp_rank: int = 0) -> memory.RankMemory:
    stages = pipeline_stages(recipe.model)
    sizes = parallel_sizes(recipe, vpp=max(s.vp_rank for s in stages) + 1)
    return memory.rank_memory(recipe, sizes, stages, pp_rank)


def terms(rank: memory.RankMemory) -> dict[str, float]:
    return {t.name: t.bytes for t in rank.terms}


# Saved bytes per token of one proxy layer at TP1, bf16, no recompute (memory.py's inventory):
ATTN_PER_TOKEN = (
    2
    * (
        H  # attention input (residual)
        + H  # input norm output
        + KV_LORA
        + ROPE  # kv_down output
        + Q_LORA  # q_down output
        + Q_LORA  # q_up fused-norm output
        + KV_LORA  # kv_up fused-norm output
        + HEADS * (QK + ROPE)  # query
        + HEADS * (QK + ROPE)  # key
        + HEADS * V  # value
        + HEADS * V  # attention output
    )
    + 4 * HEADS
)  # fp32 softmax statistics
MOE_PER_TOKEN = (
    2 * (H + H)  # MoE input, pre-MLP norm output
    + 4 * 3 * EXPERTS  # router: three fp32 [tokens, experts] tensors
    + TOPK * (2 * H + 2 * 2 * F_EXPERT + 2 * F_EXPERT + 4)  # per routed copy: input, fc1 out, act out, prob
    + 2 * (2 * F_SHARED + F_SHARED)  # shared expert fc1 out, act out
)
DENSE_MLP_PER_TOKEN = 2 * (H + H + 2 * F_DENSE + F_DENSE)  # input, fused norm out, fc1 out, act out


def test_saved_tensors_of_a_proxy_layer():
    recipe = proxy_recipe()
    rank = one_rank(recipe)
    sizes = parallel_sizes(recipe, vpp=1)
    assert ATTN_PER_TOKEN == 33_984 and MOE_PER_TOKEN == 76_568
    moe_layer = sum(s.bytes for s in memory.layer_saved(recipe, sizes, decoder_id=1))
    dense_layer = sum(s.bytes for s in memory.layer_saved(recipe, sizes, decoder_id=0))
    assert moe_layer == SEQ * (ATTN_PER_TOKEN + MOE_PER_TOKEN)
    assert dense_layer == SEQ * (ATTN_PER_TOKEN + DENSE_MLP_PER_TOKEN)
    # One micro-batch in flight (PP1): 1 dense + 7 MoE layers + the MTP layer (MoE) with its embedding,
    # norms and 2h concat, and two bf16 logits tensors (main + MTP) kept by TE's fused cross entropy.
    mtp_extra = 2 * 5 * H
    loss = 2 * 2 * H + 2 * 32768
    expected = SEQ * (
        (ATTN_PER_TOKEN + DENSE_MLP_PER_TOKEN) + 8 * (ATTN_PER_TOKEN + MOE_PER_TOKEN) + mtp_extra + 2 * loss
    )
    assert rank.activations.bytes == expected
    assert rank.in_flight == 1


@pytest.mark.parametrize(
    ("modules", "dropped_per_token"),
    [
        (["moe_act"], 2 * TOPK * F_EXPERT),
        (["mla_up_proj"], 2 * (Q_LORA + KV_LORA + 2 * HEADS * (QK + ROPE) + HEADS * V)),
        (["core_attn"], 4 * HEADS),
        (["layernorm"], 2 * (H + H)),
        (["moe"], MOE_PER_TOKEN - 2 * (H + H)),  # the checkpoint keeps the layer input and norm output
    ],
)
def test_selective_recompute_frees_its_modules(modules, dropped_per_token):
    recipe = proxy_recipe(recompute_granularity="selective", recompute_modules=modules)
    sizes = parallel_sizes(recipe, vpp=1)
    saved = memory.layer_saved(recipe, sizes, decoder_id=1)
    assert memory.selective_kept(recipe, saved) == SEQ * (ATTN_PER_TOKEN + MOE_PER_TOKEN - dropped_per_token)


def test_full_recompute_keeps_one_input_per_group():
    recipe = proxy_recipe(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=2)
    stage = pipeline_stages(recipe.model)[0]  # E, 8 decoders, MTP, L: 9 layers -> 5 groups of <= 2
    sizes = parallel_sizes(recipe, vpp=1)
    loss = 2 * SEQ * (2 * 2 * H + 2 * 32768)
    assert memory.chunk_activation_bytes(recipe, sizes, stage) == 5 * 2 * SEQ * H + loss


def test_plain_adam_on_one_gpu_bytes_per_parameter():
    """bf16 weights 2 + bf16 grad buffer 2 + fp32 master 4 + fp32 moments 4 + 4, and the step's fp32
    grad copies 4 (shard_main_param.grad = grad.float()), nothing sharded on one GPU."""
    rank = one_rank(proxy_recipe())
    n = flops.parameter_counts(proxy_recipe().model).total
    t = terms(rank)
    assert t["weights"] == 2 * n and t["grad buffer"] == 2 * n
    assert t["main params"] == 4 * n and t["exp_avg"] == 4 * n and t["exp_avg_sq"] == 4 * n
    assert t["optimizer step"] == 4 * n
    # The step's copies outweigh the activations here, so the peak is the optimizer step's.
    assert rank.allocated_bytes == 16 * n + 4 * n


def test_precision_aware_bf16_moments_keep_16_bit_master_remainders():
    """TE-held fp32 masters of bf16 weights: 2 B/param of remainders; bf16 moments are scaled inside TE's
    kernel, so the step copies nothing: 10 B/param through the step."""
    optimizer = OptimizerConfig(
        use_precision_aware_optimizer=True,
        main_grads_dtype="bf16",
        exp_avg_dtype="bf16",
        exp_avg_sq_dtype="bf16",
    )
    rank = one_rank(proxy_recipe(optimizer))
    n = flops.parameter_counts(proxy_recipe().model).total
    t = terms(rank)
    assert t["main params"] == 2 * n  # the 16 low bits of each fp32 master, beside the bf16 weight
    assert t["exp_avg"] == 2 * n and t["exp_avg_sq"] == 2 * n
    assert t["optimizer step"] == 0
    assert rank.allocated_bytes == 10 * n + t["activations"] + t["backward working set"]


@pytest.mark.parametrize(
    ("exp_avg", "exp_avg_sq", "copies_per_param"),
    [("bf16", "bf16", 0), ("fp32", "fp32", 0), ("fp32", "bf16", 4), ("fp16", "fp16", 8)],
)
def test_te_copies_to_fp32_the_moments_its_kernel_does_not_scale(exp_avg, exp_avg_sq, copies_per_param):
    optimizer = OptimizerConfig(
        use_precision_aware_optimizer=True, exp_avg_dtype=exp_avg, exp_avg_sq_dtype=exp_avg_sq
    )
    n = flops.parameter_counts(proxy_recipe().model).total
    assert terms(one_rank(proxy_recipe(optimizer)))["optimizer step"] == copies_per_param * n


RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
# Runs on the container's optimizer as it is since 740de5b (TE-held masters), each with the census of
# its model states after step 1 (train/memory_census.py) and its per-step peaks in the log beside it.
CENSUS_RUNS = [
    "side_by_side/2026-12-07-h100-recompute-j/2026-12-07-h100-mtp",
    "planner_checks/2026-12-06-h100/2026-12-06-h100-proxy_mtp",
    "planner_checks/2026-12-06-h100/2026-12-06-h100-bridge_default_1024gpu_shrunk1",
]
CENSUS = {
    "weights": "weights",
    "grad buffer": "grads",
    "main params": "optimizer master_param",
    "exp_avg": "optimizer exp_avg",
    "exp_avg_sq": "optimizer exp_avg_sq",
}


@pytest.mark.parametrize("run", CENSUS_RUNS)
def test_model_states_and_step_copies_are_what_a_measured_run_held(run):
    """Each state term is the run's census, and the step's fp32 copies fit under step 1's peak: that
    step's optimizer step makes every state, so its peak bounds states + copies."""
    result = json.loads((RESULTS / f"{run}.json").read_text())
    rank = plan(recipe_of_command(result["command"])).memory
    census = result["memory_after_step1_gib"]
    assert {t.name: pytest.approx(t.gib, rel=0.01) for t in rank.states} == {
        name: census[key] for name, key in CENSUS.items()
    }
    step1_peak = parse_log((RESULTS / f"{run}.log").read_text()).steps[1]["mem_allocated_gib"]
    assert census["allocated"] + rank.optimizer_step.gib <= step1_peak


def test_planned_peak_of_the_proxy_without_recompute_on_an_h100():
    """Within 5% of the measured peak: the states are the census (above), and 4 B/param masters put the
    plan further over than that."""
    result = json.loads((RESULTS / f"{CENSUS_RUNS[0]}.json").read_text())
    rank = plan(recipe_of_command(result["command"])).memory
    assert rank.allocated_bytes / memory.GIB == pytest.approx(result["peak_mem_allocated_gib"], rel=0.05)


@pytest.fixture(scope="module")
def gb200():
    return recipe_of(build_task("gb200_mxfp8_256gpu"))


def test_gb200_expert_states_are_not_sharded_with_expert_dp_1(gb200):
    stages = pipeline_stages(gb200.model)
    sizes = parallel_sizes(gb200, vpp=4)
    assert (sizes.dp, sizes.expert_dp) == (256 // 8, 256 // (32 * 8))
    rank2 = stages_of_rank(stages, 2)  # 8 MoE layers: decoders 2-3, 18-19, 34-35, 50-51
    w = memory.rank_weights(gb200, sizes, rank2)
    assert w.expert == 8 * 256 * 3 * 7168 * 2048 / 32 == 2_818_572_288
    t = terms(memory.rank_memory(gb200, sizes, stages, 2))
    # MXFP8 + fp32 masters: Megatron keeps fp32 main params (4 B), bf16 moments, over expert-DP 1.
    assert t["main params"] == 4 * (w.expert + w.dense / 32)
    assert t["exp_avg"] == 2 * (w.expert + w.dense / 32)
    # MXFP8 weights: rowwise + columnwise FP8 + E8M0 scales for TE GEMM weights, bf16 for the rest.
    assert t["weights"] == pytest.approx(
        (2 + 2 / 32) * (w.expert + w.dense_te_gemm) + 2 * (w.dense - w.dense_te_gemm)
    )


def test_sequence_parallel_splits_every_saved_tensor_of_a_layer():
    dsv3 = fdl.build(models.deepseek_v3_671b())
    layer = {}
    for tp in (1, 2):
        model = dataclasses.replace(
            dsv3, tensor_model_parallel_size=tp, sequence_parallel=True, mtp_num_layers=None
        )
        recipe = Recipe(
            name="t", model=model, launch=LaunchConfig(gpu_type="h200", num_nodes=1, gpus_per_node=8)
        )
        sizes = parallel_sizes(recipe, vpp=1)
        layer[tp] = sum(s.bytes for s in memory.layer_saved(recipe, sizes, decoder_id=10))
    assert layer[2] == layer[1] / 2


def _sizes(pp, vpp, microbatches):
    return dataclasses.replace(
        parallel_sizes(proxy_recipe(), vpp=1), pp=pp, vpp=vpp, num_microbatches=microbatches
    )


def test_interleaved_schedule_in_flight_forwards():
    # Rank 0 of PP8 x VPP4: (8-1) x 2 + (4-1) x 8 = 38 warm-up forwards, then one more; the schedule runs
    # chunk 0 for micro-batches 0-7, chunk 1 for 0-7, ... then chunk 0 for micro-batches 8-14.
    order = memory.in_flight_chunks(_sizes(8, 4, 64), pp_rank=0, overlap_moe_ep=False)
    assert order == [0] * 8 + [1] * 8 + [2] * 8 + [3] * 8 + [0] * 7
    last = memory.in_flight_chunks(_sizes(8, 4, 64), pp_rank=7, overlap_moe_ep=False)
    assert last == [0] * 8 + [1] * 8 + [2] * 8 + [3]  # 0 x 2 + 3 x 8 = 24 warm-up forwards, + 1
    overlapped = memory.in_flight_chunks(_sizes(8, 4, 64), pp_rank=7, overlap_moe_ep=True)
    assert len(overlapped) == 26  # EP comm overlap schedules one extra warm-up forward


def test_1f1b_in_flight_microbatches():
    assert memory.in_flight_chunks(_sizes(16, 1, 128), pp_rank=0, overlap_moe_ep=False) == [0] * 16
    assert memory.in_flight_chunks(_sizes(16, 1, 128), pp_rank=15, overlap_moe_ep=False) == [0]
    assert memory.in_flight_chunks(_sizes(4, 1, 2), pp_rank=0, overlap_moe_ep=False) == [0, 0]
    assert memory.in_flight_chunks(_sizes(1, 1, 8), pp_rank=0, overlap_moe_ep=False) == [0]


def test_unfused_cross_entropy_keeps_fp32_logits():
    fused = proxy_recipe()
    unfused = proxy_recipe(cross_entropy_loss_fusion=False)
    sizes = parallel_sizes(fused, vpp=1)
    logits = {
        name: next(s.bytes for s in memory.loss_saved(r, sizes) if s.name == "logits")
        for name, r in (("fused", fused), ("unfused", unfused))
    }
    assert logits == {"fused": 2 * SEQ * 32768, "unfused": 4 * SEQ * 32768}
