"""report/wall_clock.py (run by benchmarks/wall_clock.py) on the committed H200 results: Megatron's clock,
read back from their logs."""

import json
from pathlib import Path

import pytest

from dsv3_recipes.cli import recipe_of_command
from dsv3_recipes.report.wall_clock import wall_clock

RESULTS = Path(__file__).parents[1] / "benchmarks" / "results"


def by_megatrons_clock(path: Path) -> dict:
    return wall_clock(path, recipe_of_command(json.loads(path.read_text())["command"]))


def test_a_recorded_run_by_megatrons_clock():
    """proxy_1gpu without MTP (12 steps): Megatron's times for steps 4-12 from the log excerpt, over
    the tokens of one step (8 x 4096), give less than the recorded median of the step's own time."""
    path = RESULTS / "h200_text_defaults" / "2026-12-01-h200-h200_text_mtp0.json"
    row = by_megatrons_clock(path)
    times = [0.56, 0.5, 1.12, 0.49, 0.51, 0.53, 0.44, 1.07, 0.46]  # rounded, from the log
    assert row["warmup_steps_left_out"] == 3
    assert row["megatron_tokens_per_s_per_gpu"] == pytest.approx(8 * 4096 * 9 / sum(times), rel=0.02)
    assert row["recorded_tokens_per_s_per_gpu"] == json.loads(path.read_text())["tokens_per_s_per_gpu"]
    assert row["recorded_over_megatron"] > 1.2


def test_the_committed_table_is_what_the_script_gives(monkeypatch):
    monkeypatch.chdir(RESULTS.parents[1])  # the table names results from the repository's root
    table = json.loads((RESULTS / "wall_clock" / "2026-12-01-h200-text.json").read_text())
    graphs = next(r for r in table["runs"] if r["result"].endswith("h200_text_mtp0_graphs.json"))
    again = by_megatrons_clock(Path(graphs["result"]))
    assert again == graphs and again["warmup_steps_left_out"] == 4  # the capture step is warm-up
