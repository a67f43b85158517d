"""The one-GPU stand-in of a recipe's rank computes what that rank computes (plan.calibration)."""

import dataclasses
import json
from pathlib import Path

import pytest

from dsv3_recipes import recipes
from dsv3_recipes.launch.submit import build_task, recipe_of
from dsv3_recipes.plan import flops, memory
from dsv3_recipes.plan.calibration import stand_in
from dsv3_recipes.recipe.resolve import resolve

ROOT = Path(__file__).parent.parent
PUBLISHED = json.loads((ROOT / "benchmarks" / "published_runs.json").read_text())["rows"]


def standin(name, *overrides):
    return stand_in(resolve(recipe_of(build_task(name, list(overrides)))))


def test_h100_blockwise_rank_shapes():
    s = standin("h100_fp8_blockwise")  # TP2 EP64: 64 heads, 4 local experts, 2048 x 8 routed copies
    m = s.recipe.model
    assert (m.num_attention_heads, m.ffn_hidden_size, m.num_moe_experts) == (64, 18432 // 2, 4)
    assert (m.moe_router_topk, s.moe_micro_batch, s.token_scale) == (4, 1, 1.0)
    assert m.moe_shared_expert_intermediate_size == 1024 and m.vocab_size == 130560 // 2  # padded to 2 x 1280
    assert m.moe_token_dispatcher_type == "alltoall" and m.moe_router_force_load_balancing
    assert (
        s.recipe.mixed_precision.fp8_recipe == "blockwise" and not s.recipe.mixed_precision.fp8_param_gather
    )
    assert m.recompute_modules == ["mla_up_proj", "mlp"]  # the recipe's own recompute is measured


def test_more_copies_than_local_experts_feed_more_sequences():
    s = standin(
        "gb200_mxfp8_256gpu",
        "model.expert_model_parallel_size=64",
        "launch.nvl_segment_nodes=16",
        "model.pipeline_model_parallel_size=4",
        'model.pipeline_model_parallel_layout="Et*4|(t*4|)*14tL"',
    )
    m = s.recipe.model
    assert (m.num_moe_experts, m.moe_router_topk, s.moe_micro_batch, s.token_scale) == (4, 4, 2, 0.5)
    assert s.recipe.mixed_precision.fp8_recipe == "blockwise"  # Hopper's stand-in for MXFP8


def test_mtp_is_measured_once_for_recipes_with_and_without_it():
    with_mtp = standin("proxy_1gpu", "launch.gpu_type=h200")
    without = standin("proxy_1gpu", "launch.gpu_type=h200", "model.mtp_num_layers=None")
    assert with_mtp.key == without.key and with_mtp.recipe.model.mtp_num_layers == 1


def test_a_changed_kernel_choice_is_another_case():
    assert standin("proxy_1gpu").key != standin("proxy_1gpu", "model.moe_permute_fusion=False").key


def test_a_field_at_its_default_keeps_the_measured_key():
    """A recipe field added later at its default leaves every committed measurement in place."""
    s = standin("proxy_1gpu")
    assert s.model["moe_router_fusion"] is False  # its default
    before = {k: v for k, v in s.model.items() if k != "moe_router_fusion"}
    assert dataclasses.replace(s, model=before).key == s.key
    assert dataclasses.replace(s, model=s.model | {"moe_router_fusion": True}).key != s.key


@pytest.mark.parametrize("name", [n for n in recipes.names() if n != "torchtitan_bf16"])
def test_every_stand_in_receives_its_ranks_routed_copies(name):
    recipe = recipe_of(build_task(name))
    r = resolve(recipe)
    s = stand_in(r)
    m, rank = s.recipe.model, memory.tokens(recipe, r.sizes)
    copies = m.seq_length * s.moe_micro_batch * m.moe_router_topk
    assert copies == pytest.approx(rank.routed)  # the MoE block sees the rank's load ...
    assert m.num_moe_experts == recipe.model.num_moe_experts // r.sizes.ep  # ... over its local experts
    assert m.num_attention_heads * r.sizes.tp == recipe.model.num_attention_heads
    assert m.vocab_size * r.sizes.tp == flops.padded_vocab_size(recipe.model)
    assert s.recipe.launch.num_gpus == 1 and m.tensor_model_parallel_size == m.expert_model_parallel_size == 1


def test_every_published_row_has_a_stand_in():
    keys = set()
    for row in PUBLISHED:
        keys.add(standin(row["recipe"], *row["overrides"]).key)
    assert len(keys) > 10  # the rows span many rank shapes, each measured once


PRIORITY = [  # benchmarks/calibrate.py's first cases: the fitted rows and the 1-GPU checks
    ("gb200_mxfp8_256gpu", [], None),
    ("h100_fp8_blockwise", [], None),
    ("bridge_default_1024gpu", [], None),
    ("proxy_1gpu", ["launch.gpu_type=h200"], None),
    ("h100_fp8_blockwise", ["launch.gpu_type=h200"], 1),
]


@pytest.mark.parametrize("name,overrides,shrink", PRIORITY)
def test_a_stand_in_sets_up_as_the_train_entry_would(name, overrides, shrink):
    """The benchmark's set-up before any GPU work (the model itself needs one)."""
    pytest.importorskip("megatron.bridge", reason="needs the train extra")
    from dsv3_recipes.train import calibrate

    stand = stand_in(resolve(recipe_of(build_task(name, overrides, shrink_gpus=shrink))))
    cfg = calibrate.container(stand)
    provider = cfg.model
    m = stand.recipe.model
    assert (provider.num_attention_heads, provider.num_moe_experts) == (
        m.num_attention_heads,
        m.num_moe_experts,
    )
    assert provider.moe_router_topk == m.moe_router_topk and provider.tensor_model_parallel_size == 1
    assert provider.fp8_recipe == (stand.fp8_recipe or provider.fp8_recipe)
    assert (provider.fp8 is not None) == (stand.fp8_recipe is not None)


def test_a_stand_in_is_timed_with_the_collector_as_its_recipe_trains():
    """Megatron's loop under train.manual_gc collects between steps only; a full collection inside a
    part's timed passes (~0.5 s) made host-bound parts cost more alone than in the whole model."""
    pytest.importorskip("megatron.bridge", reason="needs the train extra")
    import gc
    import os

    from megatron.core.extensions.transformer_engine import TEGroupedLinear

    from dsv3_recipes.recipe import rules
    from dsv3_recipes.train import calibrate

    stand = standin("proxy_1gpu", "launch.gpu_type=h200")
    assert stand.parent.train.manual_gc and gc.isenabled()
    with calibrate.as_trained(stand):
        assert not gc.isenabled()
        assert all(os.environ[name] == value for name, value in stand.env.items())
        # the grouped-GEMM shim the train entry installs: the proxy's env asks for TE's one-launch path
        assert stand.env[rules.TE_GROUPED_GEMM] == "1"
        assert getattr(TEGroupedLinear.forward, "_splits_on_device", False)
    assert gc.isenabled()
    with calibrate.as_trained(standin("proxy_1gpu", "launch.gpu_type=h200", "train.manual_gc=False")):
        assert gc.isenabled()  # the loop leaves automatic collection on: so does the timing
