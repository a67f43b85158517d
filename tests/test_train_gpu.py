"""Training on a GPU through the project's own `dsv3 pretrain` path (issue 4), and the memory census
that the planner is checked against. Recorded runs: benchmarks/results/ (benchmarks/run_proxy.py)."""

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.bridge", reason="needs the train extra (uv sync --extra train)")

from dsv3_recipes.launch.submit import build_task, recipe_of  # noqa: E402
from dsv3_recipes.report import logs as report  # noqa: E402
from dsv3_recipes.report import metrics  # noqa: E402
from dsv3_recipes.report.logs import parse_log  # noqa: E402
from dsv3_recipes.train.memory_census import census_gib  # noqa: E402

MIB = 2**20


@pytest.mark.gpu
def test_census_counts_each_storage_once():
    model = torch.nn.Linear(1024, 1024, bias=False, device="cuda")  # 4 MiB of fp32 weight
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(8, 1024, device="cuda")).sum().backward()
    optimizer.step()
    wrapper = type("Megatron", (), {"optimizer": optimizer})()
    parts = census_gib([model], wrapper)
    assert parts["weights"] * 2**30 == 4 * MIB
    assert parts["grads"] * 2**30 == 4 * MIB
    assert parts["optimizer exp_avg"] * 2**30 == 4 * MIB
    assert parts["optimizer exp_avg_sq"] * 2**30 == 4 * MIB
    assert parts["other"] >= 0


@pytest.mark.gpu
def test_proxy_trains_with_falling_loss_and_mtp(tmp_path):
    command = [
        sys.executable, "-m", "dsv3_recipes.cli", "pretrain", "--factory", "proxy_1gpu",
        "train.train_iters=8", f"output_dir={tmp_path}",
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = parse_log(proc.stdout + proc.stderr)
    rows = run.rows()
    assert len(rows) == 8 and run.summary is not None
    assert rows[-1]["lm_loss"] < rows[0]["lm_loss"] - 0.5
    assert all("mtp_1_loss" in r for r in rows)
    assert run.summary["tokens_per_s_per_gpu"] > 0 and run.summary["peak_mem_allocated_gib"] > 10
    census = run.summary["memory_after_step1_gib"]
    assert census["weights"] > 6 and census["other"] > -0.01
    # The project's clock counts what happens between steps (GC, logging) as Megatron's does.
    recipe = recipe_of(build_task("proxy_1gpu"))
    by_megatron = report.megatron_throughput(run, recipe.tokens_per_step, metrics.warmup_steps(recipe))
    assert run.summary["tokens_per_s_per_gpu"] == pytest.approx(
        by_megatron["megatron_tokens_per_s_per_gpu"], rel=0.05
    )
