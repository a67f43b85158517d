"""`recipes.shrink`: every recipe at the size of the GPUs at hand, with only sizes changed."""

import dataclasses
import json
import subprocess
import sys

import fiddle as fdl
import pytest

from dsv3_recipes import recipes
from dsv3_recipes.launch.submit import build_task, preflight, recipe_of
from dsv3_recipes.plan.preflight import plan
from dsv3_recipes.recipe.layout import parse_layout, render_layout
from dsv3_recipes.recipe.rules import Capabilities
from dsv3_recipes.recipe.schema import RecipeError
from dsv3_recipes.recipes import proxy
from dsv3_recipes.recipes.shrinking import shrink

BARE = Capabilities(deep_ep=False, hybrid_ep=False, wgrad_fusion=False, wandb=False)
FULL = Capabilities(deep_ep=True, hybrid_ep=True, wgrad_fusion=True, wandb=True)
PRODUCT = [n for n in recipes.RECIPES if "proxy" not in n]  # the 671B recipes: issue 13's nine


@pytest.fixture(autouse=True)
def torchtitan_env(monkeypatch):
    """torchtitan_bf16 reads seed 003's GPU_TYPE; the fixed recipes must not see it."""
    for knob in ("JOB_TOTAL_GPUS", "GPUS_PER_NODE", "DATA_PARALLEL_SHARD_DEGREE", "PIPELINE_PARALLEL_DEGREE"):
        monkeypatch.delenv(knob, raising=False)
    monkeypatch.delenv("GPU_TYPE", raising=False)


def _task(name, monkeypatch):
    if name == "torchtitan_bf16":
        monkeypatch.setenv("GPU_TYPE", "h100")
    task = recipes.get(name)
    monkeypatch.delenv("GPU_TYPE", raising=False)
    return task


def _flat(obj, prefix=""):
    out = {}
    for key, value in obj.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "env_vars":
            out.update(_flat(value, path + "."))
        else:
            out[path] = value
    return out


def test_the_nine_671b_recipes():
    assert len(PRODUCT) == 9 and "gb200_mxfp8_256gpu" in PRODUCT and "mlperf_h100_1024gpu" in PRODUCT


@pytest.mark.parametrize("gpus", [1, 2, 4, 8])
@pytest.mark.parametrize("name", list(recipes.RECIPES))
def test_shrunk_recipe_plans_and_differs_only_where_recorded(name, gpus, monkeypatch):
    task = _task(name, monkeypatch)
    parent = fdl.build(task.recipe)
    before = dataclasses.asdict(parent)
    shrunk = recipe_of(shrink(task, gpus=gpus, gpu_type="h200", capabilities=BARE))
    assert dataclasses.asdict(fdl.build(task.recipe)) == before, "the parent must not change"

    preflight(shrunk, "local", dryrun=True)  # the planner, the MLPerf rules, data and W&B checks
    report = plan(shrunk)
    assert report.sizes.world == gpus and report.memory.total_bytes / 2**30 < report.gpu.memory_gib
    record = shrunk.shrink
    assert record.shrunk_from == parent.name and record.gpus == gpus and record.gpu_type == "h200"
    old, new = _flat(before), _flat(dataclasses.asdict(shrunk))
    differing = {path for path in old if path != "shrink" and old[path] != new[path]}
    listed = {c.field for c in record.changed + record.substituted}
    assert differing == listed
    for change in record.changed + record.substituted:
        assert json.loads(change.parent) == old[change.field]
        assert json.loads(change.value) == new[change.field]
        assert change.reason
    assert not ({c.field for c in record.changed} & {c.field for c in record.substituted})


@pytest.mark.parametrize("name", PRODUCT)
def test_shrunk_671b_recipes_keep_their_features(name, monkeypatch):
    parent = fdl.build(_task(name, monkeypatch).recipe)
    shrunk = recipe_of(shrink(_task(name, monkeypatch), gpus=1, gpu_type="h200", capabilities=BARE))
    m = shrunk.model
    assert m.first_k_dense_replace == 1 and m.num_layers > m.first_k_dense_replace
    assert m.mtp_num_layers == parent.model.mtp_num_layers
    assert m.moe_router_topk == parent.model.moe_router_topk == 8
    assert m.moe_router_num_groups == 8 and m.num_moe_experts % m.moe_router_num_groups == 0
    assert m.recompute_modules == parent.model.recompute_modules
    assert shrunk.env_vars == parent.env_vars
    assert shrunk.train.train_iters == (None if parent.train.train_samples else 10)
    if parent.train.train_samples:
        assert shrunk.train.train_samples == 10 * shrunk.train.global_batch_size
    assert shrunk.dataset.mock and shrunk.tokenizer.tokenizer_type == "NullTokenizer"


def test_gb200_substitutions_on_hopper_name_their_reason(monkeypatch):
    shrunk = recipe_of(
        shrink(_task("gb200_mxfp8_256gpu", monkeypatch), gpus=1, gpu_type="h200", capabilities=BARE)
    )
    subs = {c.field: (json.loads(c.value), c.reason) for c in shrunk.shrink.substituted}
    assert (
        subs["mixed_precision.fp8_recipe"][0] == "blockwise"
        and "MXFP8" in subs["mixed_precision.fp8_recipe"][1]
    )
    assert subs["model.moe_token_dispatcher_type"][0] == "alltoall"
    assert "hybridep" in subs["model.moe_token_dispatcher_type"][1]
    assert subs["model.cuda_graph_scope"][0] == ["attn", "moe_router"]
    assert "cuda_sync_point" in subs["model.cuda_graph_scope"][1]
    # Kept as the seed sets them: FP8 parameter gather, router padding and fusion, TE graphs, GC.
    m, mp = shrunk.model, shrunk.mixed_precision
    assert mp.fp8_param_gather and m.moe_router_padding_for_quantization and m.moe_router_fusion
    assert m.cuda_graph_impl == "transformer_engine" and m.use_te_rng_tracker and shrunk.train.manual_gc
    assert shrunk.optimizer.exp_avg_dtype == "bf16" and shrunk.train.enable_experimental


def test_on_its_own_gpu_with_everything_installed_nothing_is_substituted(monkeypatch):
    task = _task("gb200_mxfp8_256gpu", monkeypatch)
    task.recipe.dataset.data_paths = ["/lustre/c4/c4-train_text_document"]
    shrunk = recipe_of(shrink(task, gpus=4, capabilities=FULL))
    assert shrunk.shrink.substituted == []
    assert shrunk.mixed_precision.fp8_recipe == "mxfp8" and shrunk.model.moe_token_dispatcher_type == "flex"
    assert shrunk.model.vocab_size == 129280  # real tokens: the tokenizer's vocabulary stays
    # PP survives with the seed's VPP 4 and its layout pattern over fewer layers.
    assert shrunk.model.pipeline_model_parallel_size == 2
    assert shrunk.model.pipeline_model_parallel_layout == "Et|(tt|)*6L" and shrunk.model.num_layers == 13


def test_ep_overlap_survives_where_ep_does(monkeypatch):
    one = recipe_of(
        shrink(_task("h100_fp8_blockwise", monkeypatch), gpus=1, gpu_type="h200", capabilities=FULL)
    )
    subs = {c.field for c in one.shrink.substituted}
    assert {"comm_overlap.overlap_moe_expert_parallel_comm", "comm_overlap.delay_wgrad_compute"} <= subs
    four = recipe_of(
        shrink(_task("h100_fp8_blockwise", monkeypatch), gpus=4, gpu_type="h200", capabilities=FULL)
    )
    assert four.model.expert_model_parallel_size == 2 and four.model.pipeline_model_parallel_size == 2
    assert four.comm_overlap.overlap_moe_expert_parallel_comm and four.comm_overlap.delay_wgrad_compute
    assert four.model.pipeline_model_parallel_layout == "Et|(tt|)*6mL"


@pytest.mark.parametrize("name", [n for n in PRODUCT if n != "torchtitan_bf16"])
def test_every_layout_renders_back_to_itself(name):
    layout = fdl.build(recipes.get(name).recipe).model.pipeline_model_parallel_layout
    assert parse_layout(render_layout(parse_layout(layout))) == parse_layout(layout)


def test_overrides_stay_as_given_and_the_cli_shrinks_after_them():
    recipe = recipe_of(
        build_task("h100_fp8_blockwise", ["train.train_iters=20", "launch.gpu_type=h200"], shrink_gpus=1)
    )
    assert recipe.train.train_iters == 20 and recipe.launch.gpu_type == "h200"
    assert "train.train_iters" not in {c.field for c in recipe.shrink.changed}


def test_shrink_is_deterministic(monkeypatch):
    a = recipe_of(
        shrink(_task("mlperf_gb300_256gpu", monkeypatch), gpus=2, gpu_type="h200", capabilities=BARE)
    )
    b = recipe_of(
        shrink(_task("mlperf_gb300_256gpu", monkeypatch), gpus=2, gpu_type="h200", capabilities=BARE)
    )
    assert dataclasses.asdict(a) == dataclasses.asdict(b)


def test_mlperf_recipes_shrink_into_proxy_mode_with_an_evaluation_inside_the_run(monkeypatch):
    shrunk = recipe_of(
        shrink(_task("mlperf_h100_1024gpu", monkeypatch), gpus=1, gpu_type="h200", capabilities=BARE)
    )
    assert shrunk.mlperf.enabled and shrunk.mlperf.proxy
    assert 1 <= shrunk.mlperf.start_eval_step <= shrunk.train.train_iters
    assert (shrunk.scheduler.lr_warmup_iters, shrunk.scheduler.lr_decay_iters) == (4, 11996)  # the rules


@pytest.mark.parametrize("gpus", [0, -1, True, 1.5])
def test_bad_gpu_counts_are_refused_naming_the_field(gpus):
    with pytest.raises(RecipeError, match=r"^shrink: the number of GPUs must be an integer >= 1"):
        shrink(recipes.get("h100_fp8_blockwise"), gpus=gpus)


def test_a_shrunk_recipe_is_not_shrunk_again():
    once = shrink(recipes.get("h100_fp8_blockwise"), gpus=1, capabilities=BARE)
    with pytest.raises(RecipeError, match=r"^shrink: h100_fp8_blockwise_shrunk1 is already shrunk"):
        shrink(once, gpus=1)


def test_a_feature_that_cannot_be_substituted_is_refused_with_its_field():
    task = recipes.get("gb200_mxfp8_256gpu")
    task.recipe.model.moe_router_topk = 6  # TE's fused router needs top-k divisible by the group top-k
    with pytest.raises(RecipeError, match=r"^model.moe_router_fusion: gb200_mxfp8_256gpu cannot run shrunk"):
        shrink(task, gpus=1, gpu_type="h200", capabilities=BARE)


def test_the_planner_knows_the_graph_and_overlap_rules_the_substitutions_follow():
    task = recipes.get("gb200_mxfp8_256gpu")
    task.recipe.model.moe_token_dispatcher_type = "alltoall"  # flex -> alltoall without the graph fix
    with pytest.raises(RecipeError, match=r"^model.cuda_graph_scope: 'moe_preprocess' cannot be graphed"):
        plan(recipe_of(task))
    task = recipes.get("h100_fp8_blockwise")
    task.recipe.model.expert_model_parallel_size = 1
    with pytest.raises(RecipeError, match=r"^comm_overlap.overlap_moe_expert_parallel_comm: needs model.exp"):
        plan(recipe_of(task))


def _dsv3(*args):
    return subprocess.run([sys.executable, "-m", "dsv3_recipes.cli", *args], capture_output=True, text=True)


def test_cli_show_prints_the_summary_and_json_carries_the_shrink_section():
    out = _dsv3("show", "gb200_mxfp8_256gpu", "--shrink", "1", "launch.gpu_type=h200")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Shrunk from gb200_mxfp8_256gpu to 1 x h200.\nChanged (")
    assert 'mixed_precision.fp8_recipe: "mxfp8" -> "blockwise"' in out.stdout
    data = json.loads(
        _dsv3("show", "gb200_mxfp8_256gpu", "--shrink", "1", "launch.gpu_type=h200", "--json").stdout
    )
    assert data["shrink"]["shrunk_from"] == "gb200_mxfp8_256gpu"
    assert {"field", "parent", "value", "reason"} == set(data["shrink"]["substituted"][0])


def test_cli_refuses_zero_and_more_gpus_than_this_machine_has():
    out = _dsv3("plan", "h100_fp8_blockwise", "--shrink", "0")
    assert out.returncode != 0 and out.stderr.strip().startswith("dsv3: error: shrink: the number of GPUs")
    assert len(out.stderr.strip().splitlines()) == 1
    out = _dsv3("pretrain", "-f", "h100_fp8_blockwise", "--shrink", "64", "launch.gpu_type=h200")
    assert out.returncode != 0
    assert "dsv3: error: shrink: recipe h100_fp8_blockwise_shrunk64 needs 64 GPU(s)" in out.stderr


def test_proxy_defaults_follow_the_gpu_type(monkeypatch):
    """Recompute only where the planner says MBS 8 does not fit without it: on no GPU now (80 GB fits,
    tests/test_plan.py), so a figure between the H100's and the H200's memory stands in for one."""
    h100 = recipe_of(build_task("proxy_1gpu", []))
    h200 = recipe_of(build_task("proxy_1gpu", ["launch.gpu_type=h200"]))
    assert h100.model.recompute_granularity is None and h200.model.recompute_granularity is None
    plan(h100), plan(h200)  # both fit their GPU
    monkeypatch.setattr(proxy, "NO_RECOMPUTE_GIB", 100)
    assert recipe_of(build_task("proxy_1gpu", [])).model.recompute_granularity == "selective"
    assert recipe_of(recipes.proxy_1gpu(gpu_type="h200")).model.recompute_modules is None
    assert (
        recipe_of(build_task("mlperf_proxy_1gpu", ["launch.gpu_type=h200"])).model.recompute_granularity
        is None
    )
    # The defaults follow the last launch.gpu_type, as the field does (side_by_side.sh gives one first).
    both = recipe_of(build_task("proxy_1gpu", ["launch.gpu_type=h200", "launch.gpu_type=h100"]))
    assert both.launch.gpu_type == "h100" and both.model.recompute_granularity == "selective"
