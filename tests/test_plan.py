"""plan(): the 671B recipes fit their GPUs, bad input is refused naming the field, and the report."""

import dataclasses
import json
import time

import pytest

from dsv3_recipes import recipes
from dsv3_recipes.launch.submit import build_task, recipe_of
from dsv3_recipes.plan import memory
from dsv3_recipes.plan.preflight import plan
from dsv3_recipes.recipe import rules
from dsv3_recipes.recipe.schema import RecipeError
from dsv3_recipes.recipes import proxy

RECIPES_671B = [
    "gb200_mxfp8_256gpu",
    "h100_fp8_blockwise",
    "bridge_default_1024gpu",
    "h100_bf16_512gpu",
    "b200_bf16_256gpu",
    "gb200_bf16_256gpu",
]


@pytest.fixture(scope="module")
def gb200():
    return recipe_of(build_task("gb200_mxfp8_256gpu"))


@pytest.fixture(scope="module")
def bridge_default():
    return recipe_of(build_task("bridge_default_1024gpu"))


def overridden(recipe, **sections):
    """A copy of the recipe with fields replaced: overridden(r, model={"x": 1}, train={...})."""
    changes = {
        name: dataclasses.replace(getattr(recipe, name), **fields) for name, fields in sections.items()
    }
    return dataclasses.replace(recipe, **changes)


def test_gb200_seed000_layout_and_fit(gb200):
    p = plan(gb200)
    s = p.sizes
    assert (s.world, s.tp, s.pp, s.vpp, s.ep, s.dp, s.expert_dp) == (256, 1, 8, 4, 32, 32, 1)
    assert s.num_microbatches == 2048 // (1 * 32)
    assert len(p.stages) == 32 and p.stages[0].layers == ("embedding", "decoder")
    assert p.memory.total_bytes / memory.GIB < p.gpu.memory_gib
    assert p.tokens_per_step == 2048 * 4096


def test_bridge_default_seed004_fits_h100(bridge_default):
    p = plan(bridge_default)
    s = p.sizes
    assert (s.world, s.tp, s.pp, s.vpp, s.ep, s.dp, s.expert_dp) == (1024, 2, 16, 1, 64, 32, 1)
    assert p.stages[-1].layers == ("decoder", "mtp", "loss")
    assert p.memory.total_bytes / memory.GIB < 79.6
    # PP16 1F1B: the first ranks hold up to 16 micro-batches; rank 15 holds one.
    assert [r.in_flight for r in p.ranks] == [16 - r for r in range(16)]


@pytest.mark.parametrize("name", RECIPES_671B)
def test_every_671b_recipe_plans_quickly_and_fits(name):
    recipe = recipe_of(build_task(name))
    start = time.perf_counter()
    p = plan(recipe)
    assert time.perf_counter() - start < 5.0
    assert max(r.total_bytes for r in p.ranks) / memory.GIB <= p.gpu.memory_gib


def test_the_step_time_is_its_parts_and_implies_its_mfu(gb200):
    p = plan(gb200)
    assert p.step_time_s == pytest.approx(sum(p.step.parts.values()))
    assert p.tokens_per_s_per_gpu == pytest.approx(2048 * 4096 / p.step_time_s / 256)
    flops_per_step = 2048 * 4096 * p.flops_per_token
    assert p.mfu == pytest.approx(flops_per_step / (p.step_time_s * 256 * 4900e12))  # GB200 dense FP8 peak


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        (
            {"model": {"pipeline_model_parallel_layout": "Et|(tt|)*29L"}},
            "model.pipeline_model_parallel_layout: 31 stages cannot be spread over",
        ),
        (
            {"model": {"pipeline_model_parallel_layout": "Et|(tt|)*29|ttttL"}},
            "model.pipeline_model_parallel_layout: has 63 decoder layers 't' but model.num_layers is 61",
        ),
        (
            {"model": {"expert_model_parallel_size": 48}},
            "model.expert_model_parallel_size: 256 experts not divisible by EP=48",
        ),
        (
            {"model": {"expert_model_parallel_size": 64}},
            "model.expert_model_parallel_size: 256 GPUs not divisible by ETP x EP x PP",
        ),
        (
            {"train": {"global_batch_size": 2000}},
            "train.global_batch_size: 2000 not divisible by micro_batch_size x DP = 1 x 32 = 32",
        ),
        (
            {"train": {"global_batch_size": 32 * 12}},
            "train.global_batch_size: the interleaved schedule needs a multiple of PP=8 micro-batches",
        ),
        (
            {"launch": {"gpu_type": "h100", "gpus_per_node": 8, "num_nodes": 32}},
            "mixed_precision.fp8_recipe: mxfp8 needs Blackwell tensor cores",
        ),
        (
            {"train": {"micro_batch_size": 8}},
            "train.micro_batch_size: PP rank .* needs .* GiB but a gb200 has",
        ),
        (
            {"model": {"tensor_model_parallel_size": 2, "sequence_parallel": False}},
            "model.sequence_parallel: MoE with TP=2 needs sequence parallelism",
        ),
        (
            {"model": {"virtual_pipeline_model_parallel_size": 2}},
            r"model.pipeline_model_parallel_layout: 32 stages, but PP x VPP = 8 x 2",
        ),
        (
            {"model": {"recompute_modules": ["moe_act", "attn"]}},
            r"model.recompute_modules: unknown \['attn'\]",
        ),
        (
            {"model": {"moe_router_topk": 6}},
            "model.moe_router_fusion: TE's fused router needs moe_router_topk=6 divisible by "
            "moe_router_group_topk=4",
        ),
        ({"train": {"micro_batch_size": "2"}}, "train.micro_batch_size: expected int, got str"),
        (
            {"optimizer": {"use_precision_aware_optimizer": False}},
            "optimizer.exp_avg_dtype: bf16 needs optimizer.use_precision_aware_optimizer=True",
        ),
        (
            {"mixed_precision": {"fp8_recipe": None}},
            "mixed_precision.fp8_param_gather: needs an FP8 recipe",
        ),
    ],
)
def test_refusals_name_the_field(gb200, sections, message):
    with pytest.raises(RecipeError, match="^" + message):
        plan(overridden(gb200, **sections))


def test_to_dict_is_json_and_agrees_with_the_plan(bridge_default):
    p = plan(bridge_default)
    data = json.loads(json.dumps(p.to_dict()))
    assert data["parallel"]["dp"] == 32 and data["parallel"]["expert_dp"] == 1
    assert len(data["stages"]) == 16 and data["stages"][0]["layers"][0] == "embedding"
    assert data["memory"]["pp_rank"] == p.memory.pp_rank
    assert data["memory"]["total_gib"] == pytest.approx(p.memory.total_bytes / memory.GIB)
    assert data["memory"]["total_gib"] == max(data["memory"]["per_rank_total_gib"])
    # TP2 pads the vocabulary from 129,280 to 130,560 rows, in the embedding and in the output layer.
    assert data["parameters"]["main_model"] == 671_026_404_352 + 2 * (130_560 - 129_280) * 7168
    assert data["flops_per_token"] == p.flops_per_token and data["tokens_per_step"] == 4096 * 4096


def test_render_shows_layout_memory_and_speed(gb200):
    p = plan(gb200)
    text = p.render()
    mem = p.memory
    assert "Plan for gb200_mxfp8_256gpu: 256 x gb200 (184.0 GiB)" in text
    assert "TP1 PP8 VPP4 CP1 DP32 | EP32 ETP1 expert-DP1" in text
    assert f"Memory of the most loaded rank (PP rank {mem.pp_rank})" in text
    assert f"{mem.total_bytes / memory.GIB:.2f}" in text
    assert f"{p.step_time_s:.2f} s/step" in text


GRAPHS = [
    "model.cuda_graph_impl=transformer_engine",
    'model.cuda_graph_scope=["attn","moe_router","moe_preprocess"]',
    "model.use_te_rng_tracker=True",
    "model.moe_token_dispatcher_type=alltoall",
]


def test_a_plan_with_cuda_graphs_says_their_pools_are_not_in_its_memory():
    """An MTP proxy with TE's graphs ran out of 80 GB that its plan's terms fit in: the plan names the
    pools it does not count, in the printout and in --json, and says nothing where nothing is captured."""
    graphed = plan(recipe_of(build_task("proxy_1gpu", ["launch.gpu_type=h200", *GRAPHS])))
    assert graphed.to_dict()["memory"]["not_counted"][0].startswith("CUDA-graph private pools")
    assert "Not counted: CUDA-graph private pools" in graphed.render()
    eager = plan(recipe_of(build_task("proxy_1gpu", ["launch.gpu_type=h200"])))
    assert eager.to_dict()["memory"]["not_counted"] == []
    assert "Not counted" not in eager.render()


def test_every_registered_recipe_plans():
    for name in recipes.RECIPES:
        if name != "torchtitan_bf16":
            plan(recipe_of(build_task(name)))


@pytest.mark.parametrize("gpu_type", ["h100", "h200", "b200", "gb200", "gb300"])
def test_proxy_1gpu_recomputes_exactly_where_the_planner_says_it_must(gpu_type):
    """proxy_1gpu chooses recompute by the planner's figure for its step without it (NO_RECOMPUTE_GIB)."""
    from dsv3_recipes.recipe import hardware

    task = proxy.proxy_1gpu(gpu_type)
    recomputes = recipe_of(task).model.recompute_granularity == "selective"
    task.recipe.model.recompute_granularity = None
    task.recipe.model.recompute_modules = None
    try:
        needed = plan(recipe_of(task)).memory.total_bytes / memory.GIB
    except RecipeError:
        needed = None  # the planner refuses it on this GPU
    assert recomputes == (needed is None)
    assert recomputes == (hardware.gpu(gpu_type).memory_gib < proxy.NO_RECOMPUTE_GIB)
    if needed is not None:
        assert proxy.NO_RECOMPUTE_GIB - 1 < needed <= proxy.NO_RECOMPUTE_GIB


GROUPED_GEMM = rules.TE_GROUPED_GEMM  # proxy_1gpu sets it to "1"
SELECTIVE_RECOMPUTE = [
    "model.recompute_granularity=selective",
    f"model.recompute_modules={json.dumps(list(proxy.RECOMPUTE_MODULES), separators=(',', ':'))}",
]


BLACKWELL_FIX = f"set env_vars.{GROUPED_GEMM}=0, or mixed_precision.fp8_recipe=mxfp8"
HOPPER_FIX = f"set env_vars.{GROUPED_GEMM}=0"  # Hopper has no MXFP8 to switch to


@pytest.mark.parametrize(
    ("gpu_type", "why", "fix"),
    [
        # TE's GroupedLinear raises at the first forward when its grouped-tensor path meets blockwise FP8
        # on Blackwell.
        *((gpu, "(Blackwell) cannot take", BLACKWELL_FIX) for gpu in ("b200", "gb200", "gb300")),
        # TE takes it on Hopper, then its grouped block quantize asserts on the device: Megatron pads each
        # expert's tokens to 16, the quantize needs 128 (an H100 run of 2026-12-07 died at its first forward).
        *((gpu, "cannot take", HOPPER_FIX) for gpu in ("h100", "h200")),
    ],
)
def test_blockwise_fp8_is_refused_with_tes_one_launch_grouped_gemm(gpu_type, why, fix):
    """The plan refuses it in one line that names the fix."""
    assert recipe_of(build_task("proxy_1gpu")).env_vars[GROUPED_GEMM] == "1"
    task = build_task("proxy_1gpu", [f"launch.gpu_type={gpu_type}", "mixed_precision.fp8_recipe=blockwise"])
    with pytest.raises(RecipeError) as err:
        recipe_of(task)
    message = str(err.value)
    assert err.value.path == "mixed_precision.fp8_recipe" and "\n" not in message
    assert message.startswith(f"mixed_precision.fp8_recipe: 'blockwise' on {gpu_type} {why}")
    assert message.endswith(fix)
    assert ("mxfp8" in message) == (fix == BLACKWELL_FIX)
    assert ("multiples of 128" in message) == (fix == HOPPER_FIX)


@pytest.mark.parametrize(
    ("gpu_type", "fp8", "grouped"),
    [
        ("b200", "mxfp8", "1"),  # TE's grouped-tensor path runs MXFP8 on Blackwell
        ("b200", "blockwise", "0"),  # one GEMM per expert, as without the variable
        ("gb300", "blockwise", "0"),
        ("b200", None, "1"),  # the shipped proxy_1gpu is BF16
        ("h100", "blockwise", "0"),  # Hopper runs blockwise one GEMM per expert
        ("h200", None, "1"),  # and BF16 on the grouped-tensor path
    ],
)
def test_blockwise_grouped_gemm_rule_keeps_what_te_runs(gpu_type, fp8, grouped):
    overrides = [f"launch.gpu_type={gpu_type}", f"env_vars.{GROUPED_GEMM}={grouped}"]
    # FP8 blockwise keeps Megatron's fp32 masters and their step copies: on an H100 it fits with recompute.
    overrides += [f"mixed_precision.fp8_recipe={fp8}", *SELECTIVE_RECOMPUTE] if fp8 else []
    recipe = recipe_of(build_task("proxy_1gpu", overrides))
    assert (recipe.mixed_precision.fp8_recipe, recipe.env_vars[GROUPED_GEMM]) == (fp8, grouped)
    assert plan(recipe).gpu.name == gpu_type


def test_the_rule_reads_the_variable_as_te_does():
    blockwise = recipe_of(
        build_task(
            "proxy_1gpu",
            [
                "launch.gpu_type=h100",
                "mixed_precision.fp8_recipe=blockwise",
                f"env_vars.{GROUPED_GEMM}=0",
                *SELECTIVE_RECOMPUTE,
            ],
        )
    )
    on_b200 = overridden(blockwise, launch={"gpu_type": "b200"})
    rule = rules.BLOCKWISE_GROUPED_GEMM
    # TE: bool(int(value)); text that is no integer is TE's own error when it builds the layer.
    for value, on in (("1", True), ("2", True), (" 1", True), ("0", False), ("00", False), ("yes", False)):
        recipe = dataclasses.replace(on_b200, env_vars={**on_b200.env_vars, GROUPED_GEMM: value})
        assert rules.te_grouped_gemm(recipe) is on, value
        assert (rule.problem(recipe, None) is not None) is on, value
    unset = dataclasses.replace(
        on_b200, env_vars={k: v for k, v in on_b200.env_vars.items() if k != GROUPED_GEMM}
    )
    assert not rules.te_grouped_gemm(unset) and plan(unset).gpu.name == "b200"
