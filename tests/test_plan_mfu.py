"""The planner's step time uses the MFU a proxy run measured, and says where it comes from."""

import json
from pathlib import Path

import pytest

from dsv3_recipes.launch import build_task, recipe_of
from dsv3_recipes.plan import ASSUMED_MFU, MEASURED_MFU, plan

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize("key", list(MEASURED_MFU))
def test_each_measured_mfu_is_its_result_by_megatrons_clock(key):
    measured = MEASURED_MFU[key]
    table = json.loads((ROOT / "benchmarks/results/wall_clock/2026-12-01-h200-text.json").read_text())
    (row,) = [r for r in table["runs"] if r["result"] == measured.result]
    assert row["mfu_by_megatron_clock"] == pytest.approx(measured.mfu, abs=5e-5)
    result = json.loads((ROOT / measured.result).read_text())
    assert result["mfu"] > measured.mfu  # the run's own figure left the GC between steps out
    assert result["data"]["kind"] == "text" and result["routing"] == "natural"  # the protocol's runs
    assert result["gpu"].lower().endswith(key[0]) and result["num_gpus"] == 1


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
