"""The planner's step time uses the MFU a proxy run measured, and says where it comes from."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from dsv3_recipes.cli import recipe_of_command
from dsv3_recipes.launch.submit import build_task, recipe_of
from dsv3_recipes.plan.preflight import ASSUMED_MFU, MEASURED_MFU, plan

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize("key", list(MEASURED_MFU))
def test_each_measured_mfu_is_the_committed_proxy_by_the_wall_clock(key):
    measured = MEASURED_MFU[key]
    result = json.loads((ROOT / measured.result).read_text())
    assert result["mfu"] == pytest.approx(measured.mfu, abs=5e-5)
    # The run's timer counted the GC between steps: Megatron's own clock gives the same tokens/s.
    assert result["tokens_per_s_per_gpu"] == pytest.approx(result["megatron_tokens_per_s_per_gpu"], rel=0.01)
    assert result["data"]["kind"] == "text" and result["routing"] == "natural"  # the protocol's runs
    assert result["gpu"].lower().endswith(key[0]) and result["num_gpus"] == 1
    # What ran is the committed proxy_1gpu on that GPU, up to its data, step count and output directory.
    ran = recipe_of_command(result["command"])
    committed = recipe_of(build_task("proxy_1gpu", [f"launch.gpu_type={key[0]}"]))
    for section in ("model", "optimizer", "mixed_precision", "comm_overlap", "launch"):
        assert getattr(ran, section) == getattr(committed, section), section
    assert replace(ran.train, train_iters=committed.train.train_iters) == committed.train


def test_plan_uses_the_measured_mfu_and_says_so():
    report = plan(recipe_of(build_task("proxy_1gpu", ["launch.gpu_type=h200"])))
    assert report.mfu == MEASURED_MFU[("h200", False)].mfu
    assert report.to_dict()["mfu_source"].startswith("measured on the 1-GPU proxy: benchmarks/results/")
    assert "measured on the 1-GPU proxy" in report.render()


def test_without_a_measurement_the_mfu_is_assumed_and_given_wins():
    recipe = recipe_of(build_task("h100_fp8_blockwise", []))
    assumed = plan(recipe)
    assert assumed.mfu == ASSUMED_MFU and assumed.mfu_source.startswith(
        "assumed: no measured proxy run on h100"
    )
    given = plan(recipe, mfu=0.25)
    assert given.mfu_source == "given" and given.step_time_s == pytest.approx(
        assumed.step_time_s * 0.4 / 0.25
    )
