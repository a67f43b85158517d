"""Throughput arithmetic and the `dsv3 report` parser/plot, on log text in the formats the runs print."""

import pytest

from dsv3_recipes.cli import main
from dsv3_recipes.launch.submit import build_task, recipe_of
from dsv3_recipes.recipe import hardware
from dsv3_recipes.report import logs as report
from dsv3_recipes.report import metrics
from dsv3_recipes.report.logs import parse_log, read_run
from dsv3_recipes.report.metrics import step_metrics, summarize


def test_step_metrics_by_hand():
    # 8 sequences x 4096 tokens in 2.0 s on 2 GPUs: 8192 tokens/s/GPU; x 5e9 FLOPs/token = 40.96 TFLOPS.
    common = dict(
        step=5,
        lm_loss=7.5,
        step_time_s=2.0,
        tokens_per_step=8 * 4096,
        flops_per_token=5e9,
        world_size=2,
        gpu=hardware.GPUS["h100"],
        mem_allocated_bytes=3 * 2**30,
        mem_reserved_bytes=4 * 2**30,
    )
    m = step_metrics(**common, fp8=False)
    assert m.tokens_per_s_per_gpu == 8192
    assert m.model_tflops_per_gpu == pytest.approx(40.96)
    assert m.mfu == pytest.approx(40.96 / 989)
    assert (m.mem_allocated_gib, m.mem_reserved_gib) == (3, 4)
    assert step_metrics(**common, fp8=True).mfu == pytest.approx(40.96 / 1979)


def test_summary_skips_warmup_and_counts_every_second_of_the_rest():
    def at(step, seconds):
        return step_metrics(
            step=step,
            lm_loss=10.0 - step,
            step_time_s=seconds,
            tokens_per_step=4096,
            flops_per_token=1e9,
            world_size=1,
            gpu=hardware.GPUS["h100"],
            mem_allocated_bytes=step * 2**30,
            mem_reserved_bytes=0,
            fp8=False,
        )

    # Four quick steps and one with a GC pause: the median would say 1 s a step; a run pays 1.6 s.
    steps = [at(1, 30.0), at(2, 1.0), at(3, 1.0), at(4, 3.4), at(5, 1.0), at(6, 1.0)]
    s = summarize(steps, warmup_steps=1)
    assert s["steady_steps"] == 5 and s["step_time_s_median"] == 1.0
    assert s["step_time_s"] == pytest.approx(1.48)
    assert s["tokens_per_s_per_gpu"] == pytest.approx(5 * 4096 / 7.4)
    assert s["mfu"] == pytest.approx(5 * 4096 * 1e9 / 7.4 / 989e12)
    assert s["peak_mem_allocated_gib"] == 6 and (s["first_lm_loss"], s["last_lm_loss"]) == (9.0, 4.0)


def test_capturing_cuda_graphs_is_warm_up_too():
    assert metrics.warmup_steps(recipe_of(build_task("proxy_1gpu"))) == metrics.WARMUP_STEPS
    graphs = build_task("proxy_1gpu", ["model.cuda_graph_impl=transformer_engine"])
    assert metrics.warmup_steps(recipe_of(graphs)) == metrics.WARMUP_STEPS + 1


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA GB200", "gb200"),
        ("NVIDIA B200", "b200"),
    ],
)
def test_detect_gpu(name, expected):
    assert hardware.detect(name).name == expected


def test_detect_unknown_gpu_names_the_table():
    with pytest.raises(ValueError, match="no peak-TFLOPS entry for GPU 'Tesla T4'; known: h100"):
        hardware.detect("Tesla T4")


LOG = """\
proxy_1gpu/0 [default0]: [2026-11-22 20:00:01] iteration        1/      12 | consumed samples:            8 | elapsed time per iteration (ms): 9000.0 | throughput per GPU (TFLOP/s/GPU): 12.5 | learning rate: 3.000000E-05 | global batch size:     8 | lm loss: 1.040000E+01 | mtp_1 loss: 1.050000E+01 | loss scale: 1.0 |
proxy_1gpu/0 [default0]: DSV3_METRICS {"step": 1, "lm_loss": 10.4, "step_time_s": 9.0, "tokens_per_s_per_gpu": 3640.9, "model_tflops_per_gpu": 14.0, "mfu": 0.014, "mem_allocated_gib": 50.0, "mem_reserved_gib": 52.0}
proxy_1gpu/0 [default0]: [2026-11-22 20:00:04] iteration        2/      12 | consumed samples:           16 | elapsed time per iteration (ms): 2500.0 | throughput per GPU (TFLOP/s/GPU): 55.1 | learning rate: 6.000000E-05 | global batch size:     8 | lm loss: 9.800000E+00 | mtp_1 loss: 9.900000E+00 | loss scale: 1.0 |
proxy_1gpu/0 [default0]: DSV3_METRICS {"step": 2, "lm_loss": 9.8, "step_time_s": 2.5, "tokens_per_s_per_gpu": 13107.2, "model_tflops_per_gpu": 56.0, "mfu": 0.0566, "mem_allocated_gib": 57.4, "mem_reserved_gib": 60.0}
proxy_1gpu/0 [default0]: DSV3_SUMMARY {"recipe": "proxy_1gpu", "num_gpus": 1, "step_time_s": 2.5}
"""


def test_parse_log_joins_megatron_and_project_lines():
    run = parse_log(LOG)
    rows = run.rows()
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[1]["megatron_tflops_per_gpu"] == 55.1 and rows[1]["model_tflops_per_gpu"] == 56.0
    assert rows[1]["mtp_1_loss"] == 9.9 and rows[1]["lm_loss"] == 9.8
    assert run.summary == {"recipe": "proxy_1gpu", "num_gpus": 1, "step_time_s": 2.5}


def test_megatron_clock_counts_the_pause_between_steps():
    """Megatron's iteration time holds what Bridge does between steps (its manual GC): step 2 here."""
    text = LOG + LOG.splitlines()[2].replace("iteration        2/", "iteration        3/").replace(
        "2500.0", "500.0"
    )
    by_megatron = report.megatron_throughput(parse_log(text), 4096, warmup_steps=1)
    assert by_megatron["megatron_tokens_per_s_per_gpu"] == pytest.approx(2 * 4096 / 3.0)
    assert by_megatron["megatron_tflops_per_gpu"] == pytest.approx(55.1)  # the same FLOPs each step
    assert parse_log(text).steps[3]["megatron_step_time_s"] == 0.5
    assert report.megatron_throughput(parse_log(LOG), 4096, warmup_steps=2) == {}


def test_report_command_writes_table_and_png(tmp_path, capsys):
    (tmp_path / "log-proxy.out").write_text(LOG)
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "tok/s/GPU" in out and "13,107" in out and "55.1" in out
    png = tmp_path / "report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_report_reads_metrics_jsonl(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(LOG.splitlines()[1].split("DSV3_METRICS ")[1] + "\n")
    assert read_run(tmp_path).rows()[0]["tokens_per_s_per_gpu"] == 3640.9


def test_report_on_empty_dir_fails_clearly(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no .log/.out/.txt/.jsonl files under" in capsys.readouterr().err
