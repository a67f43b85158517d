"""`dsv3 report LOGDIR`: a run's per-step table and a PNG of loss and tokens/s per step.

Reads the log text of a run (NeMo-Run's log files, a tee'd console log, or metrics.jsonl) and joins
the project's DSV3_METRICS lines with Megatron's own iteration lines (its TFLOPS figure, MTP loss).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from dsv3_recipes.report.metrics import METRICS_TAG, SUMMARY_TAG

_MEGATRON_LINE = re.compile(r"iteration\s+(\d+)/\s*\d+ \|(.*)")
_MEGATRON_FIELD = re.compile(r"\s*([^|:]+?):\s*([-+0-9.eE]+)\s*\|")


@dataclass
class RunLog:
    steps: dict[int, dict[str, float]] = field(default_factory=dict)
    summary: dict | None = None

    def rows(self) -> list[dict[str, float]]:
        return [{"step": s, **self.steps[s]} for s in sorted(self.steps)]


def _json_after(tag: str, line: str) -> dict:
    """The JSON object after ``tag``; text glued on behind it (another stream's output) is ignored."""
    return json.JSONDecoder().raw_decode(line.split(tag, 1)[1].lstrip())[0]


def parse_log(text: str, source: str = "log") -> RunLog:
    """Per-step values from any mix of DSV3_METRICS, DSV3_SUMMARY and Megatron iteration lines."""
    run = RunLog()
    for number, line in enumerate(text.splitlines(), 1):
        _parse_line(run, line, f"{source}:{number}")
    return run


def _parse_line(run: RunLog, line: str, where: str) -> None:
    """One line into ``run``; a line that carries a tag but not its data fails naming file and line."""
    try:
        if METRICS_TAG in line:
            data = _json_after(METRICS_TAG, line)
            run.steps.setdefault(int(data.pop("step")), {}).update(data)
        elif SUMMARY_TAG in line:
            run.summary = _json_after(SUMMARY_TAG, line)
        elif match := _MEGATRON_LINE.search(line):
            values = dict(_MEGATRON_FIELD.findall(match.group(2) + "|"))
            step = run.steps.setdefault(int(match.group(1)), {})
            if "throughput per GPU (TFLOP/s/GPU)" in values:
                step["megatron_tflops_per_gpu"] = float(values["throughput per GPU (TFLOP/s/GPU)"])
            if "elapsed time per iteration (ms)" in values:  # its interval timer: GC and logging too
                step["megatron_step_time_s"] = float(values["elapsed time per iteration (ms)"]) / 1000
            if "learning rate" in values:
                step["learning_rate"] = float(values["learning rate"])
            for key, value in values.items():
                if key.endswith(" loss"):
                    step[key.replace(" ", "_")] = float(value)
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # JSONDecodeError is a ValueError
        what = "no step" if isinstance(e, KeyError) else str(e).splitlines()[0]
        raise ValueError(f"{where}: unreadable metrics line ({what}): {line.strip()[:80]}") from None


def read_run(logdir: str | Path) -> RunLog:
    """Parse every log under a run directory (or one file)."""
    path = Path(logdir)
    files = (
        [path]
        if path.is_file()
        else sorted(
            p for p in path.rglob("*") if p.is_file() and p.suffix in (".log", ".out", ".txt", ".jsonl")
        )
    )
    if not files:
        raise FileNotFoundError(f"no .log/.out/.txt/.jsonl files under {path}")
    run = RunLog()
    for p in files:
        for number, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
            if p.suffix == ".jsonl" and not line.strip():
                continue
            _parse_line(run, f"{METRICS_TAG} {line}" if p.suffix == ".jsonl" else line, f"{p}:{number}")
    return run


def megatron_throughput(
    run: RunLog, tokens_per_step_per_gpu: float, warmup_steps: int, left_out: frozenset[int] = frozenset()
) -> dict[str, float]:
    """Tokens/s/GPU and TFLOPS/GPU by Megatron's own clock and FLOPs count, over the steps after warm-up
    (and outside ``left_out``, the profiled ones) from their total time: its interval timer counts what
    happens between steps (GC, logging)."""
    rows = [
        r
        for r in run.rows()
        if r["step"] > warmup_steps and r["step"] not in left_out and "megatron_step_time_s" in r
    ]
    seconds = sum(r["megatron_step_time_s"] for r in rows)
    if not rows:
        return {}
    flops = sum(r.get("megatron_tflops_per_gpu", 0.0) * r["megatron_step_time_s"] for r in rows)
    return {
        "megatron_tokens_per_s_per_gpu": tokens_per_step_per_gpu * len(rows) / seconds,
        "megatron_tflops_per_gpu": flops / seconds,
    }


COLUMNS = (
    ("step", "step", "{:.0f}"),
    ("lm_loss", "lm loss", "{:.4f}"),
    ("mtp_1_loss", "mtp loss", "{:.4f}"),
    ("step_time_s", "step s", "{:.3f}"),
    ("megatron_step_time_s", "Megatron step s", "{:.3f}"),
    ("tokens_per_s_per_gpu", "tok/s/GPU", "{:,.0f}"),
    ("model_tflops_per_gpu", "TFLOPS/GPU", "{:.1f}"),
    ("megatron_tflops_per_gpu", "Megatron TFLOPS", "{:.1f}"),
    ("mfu", "MFU", "{:.1%}"),
    ("mem_allocated_gib", "alloc GiB", "{:.1f}"),
    ("worst_router_max_over_mean", "router max/mean", "{:.2f}"),
)


def render_table(run: RunLog) -> str:
    rows = run.rows()
    lines = [" | ".join(title for _, title, _ in COLUMNS)]
    for row in rows:
        lines.append(" | ".join(fmt.format(row[key]) if key in row else "-" for key, _, fmt in COLUMNS))
    if run.summary:
        lines.append("summary: " + json.dumps(run.summary))
    return "\n".join(lines)


def plot(run: RunLog, png: Path) -> Path:
    """Loss and tokens/s/GPU against the step, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = run.rows()
    fig, (loss_ax, tput_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("lm_loss", "lm loss"), ("mtp_1_loss", "MTP loss")):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            loss_ax.plot(*zip(*points, strict=True), label=label)
    loss_ax.set(xlabel="step", ylabel="loss", title="loss")
    loss_ax.legend()
    points = [(r["step"], r["tokens_per_s_per_gpu"]) for r in rows if "tokens_per_s_per_gpu" in r]
    if points:
        tput_ax.plot(*zip(*points, strict=True))
    tput_ax.set(xlabel="step", ylabel="tokens/s/GPU", title="throughput")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def report(logdir: str, plot_png: bool = True) -> str:
    run = read_run(logdir)
    if not run.steps:
        raise ValueError(f"no training steps found in the logs under {logdir}")
    text = render_table(run)
    if plot_png:
        base = Path(logdir)
        png = plot(run, (base if base.is_dir() else base.parent) / "report.png")
        text += f"\nplot: {png}"
    return text
