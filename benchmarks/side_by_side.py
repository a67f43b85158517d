"""The pieces of benchmarks/side_by_side.sh that are not shell: TorchTitan's result, the tables.

    python benchmarks/side_by_side.py torchtitan LOG --out RESULT.json --command CMD [--left-out 17-20]
        [--label torchtitan_balanced]
    python benchmarks/side_by_side.py report LABEL=RESULT.json[,PROFILE.json] ... [--md OUT.md]

``torchtitan`` turns the log of TorchTitan's run (../shared/torchtitan/run.sh, copied into .tt/harness)
into a result under the protocol of run_recipe.py: command, machine, date, data, routing, the expert load
of every step (``TT_EXPERT_LOAD`` lines of benchmarks/torchtitan/tt_expert_load.py), tokens/s over the
steady steps that the profiler left alone (from their total time, as the project's; TorchTitan's median
beside it), peak memory, losses; its routing is ``force_balanced`` where the command has TorchTitan's
``--training.debug_moe_force_load_balance`` (round-robin experts). ``report`` puts the runs of one call
side by side: throughput, ratios against the first run, the issue's targets (each proxy run against the
TorchTitan run of its own routing), the expert load, and each run's kernel profile by category.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import statistics
import sys
from pathlib import Path

from dsv3_recipes.report.kernel_profile import side_by_side

H200_BF16_PEAK_TFLOPS = 989.0  # dense BF16, as dsv3_recipes.recipe.hardware and TorchTitan take it
FIRST_STEADY_STEP = 6  # TorchTitan's figures are medians of steps >= 6 (../shared/torchtitan/summarize.py)
_STEP = re.compile(
    r"step:\s*(\d+)\s+loss:\s*([-\d.naninf]+)\s+grad_norm:\s*([-\d.naninf]+)\s+memory:\s*([\d.]+)GiB"
    r"\(([\d.]+)%\)\s+tps:\s*([\d,]+)\s+tflops:\s*([\d.,]+)\s+mfu:\s*([\d.]+)%"
)
_ACTIVE = re.compile(r"step:\s*(\d+)\s+mem_peak_active:\s*([\d.]+)GiB")
_GPU = re.compile(r"^(NVIDIA [^,]+), (\d+) MiB")
_LOAD_TAG = "TT_EXPERT_LOAD"
TT_FORCE_BALANCE = "--training.debug_moe_force_load_balance"  # TorchTitan f1a96b34 (config/job_config.py)


def steps_range(text: str) -> frozenset[int]:
    """``17-20`` or ``17,18`` -> the steps."""
    steps: set[int] = set()
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        steps.update(range(int(low), int(high or low) + 1))
    return frozenset(steps)


def torchtitan_result(
    log: str, command: str, left_out: frozenset[int], tokens_per_step: int, label: str = "torchtitan"
) -> dict:
    """TorchTitan's run as a result; fails if the log holds no training step."""
    steps: dict[int, dict[str, float]] = {}
    active: dict[int, float] = {}
    load: dict[int, dict] = {}
    gpu = None
    for line in log.splitlines():
        if match := _STEP.search(line):
            steps[int(match.group(1))] = {
                "loss": float(match.group(2)),
                "reserved_gib": float(match.group(4)),
                "tps": float(match.group(6).replace(",", "")),
                "tflops": float(match.group(7).replace(",", "")),
            }
        elif match := _ACTIVE.search(line):
            active[int(match.group(1))] = float(match.group(2))
        elif _LOAD_TAG in line:
            row = json.JSONDecoder().raw_decode(line.split(_LOAD_TAG, 1)[1].lstrip())[0]
            load[int(row.pop("step"))] = row
        elif gpu is None and (match := _GPU.match(line.strip())):
            gpu = match.group(1)
    if not steps:
        raise ValueError("no TorchTitan step line (step: N loss: ... tps: ...) in the log")
    steady = [s for s in sorted(steps) if s >= FIRST_STEADY_STEP and s not in left_out]
    if not steady:
        raise ValueError(f"no steady step: the log has steps {sorted(steps)}, left out {sorted(left_out)}")
    seconds = sum(tokens_per_step / steps[s]["tps"] for s in steady)
    last = max(load) if load else None
    return {
        "recipe": "torchtitan",
        "label": label,
        "framework": "TorchTitan f1a96b34, deepseek_v3 flavor proxy_3b (proxy_1gpu's model without MTP)",
        "date": datetime.date.today().isoformat(),
        "machine": f"1 x {gpu}" if gpu else None,
        "gpu": gpu,
        "num_gpus": 1,
        "command": command,
        "data": {
            "kind": "text",
            "corpus": "bench-text",
            "tokens": None,  # TorchTitan tokenizes ../shared/bench-text/text.json.gz itself (c4_test loader)
            "tokenizer": ".tt/tokenizer (../shared/bench-text/tokenizer)",
        },
        "routing": "force_balanced" if TT_FORCE_BALANCE in command else "natural",
        "expert_load_last_step": load.get(last) if last is not None else None,
        "expert_load_per_step": [{"step": s, **load[s]} for s in sorted(load)],
        "steps": len(steps),
        "steady_steps": steady,
        "profiled_steps_left_out": sorted(left_out),
        "timing": "total time of the steady steps (TorchTitan's per-step tps: tokens over the time since the "
        "last step's log line)",
        "tokens_per_s_per_gpu": tokens_per_step * len(steady) / seconds,
        "tokens_per_s_median": statistics.median(steps[s]["tps"] for s in steady),
        "torchtitan_tflops_median": statistics.median(steps[s]["tflops"] for s in steady),
        "peak_mem_active_gib": max(active.values()) if active else None,
        "peak_mem_reserved_gib": max(v["reserved_gib"] for v in steps.values()),
        "first_lm_loss": steps[min(steps)]["loss"],
        "last_lm_loss": steps[max(steps)]["loss"],
    }


FP8_RECIPE = re.compile(r"\bmixed_precision\.fp8_recipe=(?!None\b|null\b)")  # an FP8 run's override


def is_fp8(result: dict) -> bool:
    """Whether a proxy run trained in FP8: its MFU here is still against the BF16 peak, as every row's (its
    result JSON's ``mfu`` is against the GPU's FP8 peak), and TorchTitan beside it ran BF16."""
    return bool(FP8_RECIPE.search(result.get("command", "")))


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def throughput_table(runs: list[tuple[str, dict]]) -> str:
    """Markdown: tokens/s, the ratio to the first run, Megatron-formula TFLOPS and MFU, memory, routing."""
    first = runs[0][1]["tokens_per_s_per_gpu"]
    # Megatron's FLOPs per token of the model without MTP, from a proxy run without MTP (TorchTitan's model)
    flops_per_token = next(
        (
            r["megatron_tflops_per_gpu"] * 1e12 / r["megatron_tokens_per_s_per_gpu"]
            for _, r in runs
            if r.get("megatron_tflops_per_gpu") and "mtp_num_layers=None" in r.get("command", "")
        ),
        None,
    )
    lines = [
        "| run | tokens/s | × first | Megatron TFLOPS (MFU) | peak GiB | worst router max/mean: last step "
        "(max over the run) | steps, profiled ones left out |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, r in runs:
        tflops = r.get("megatron_tflops_per_gpu")
        derived = ""
        if tflops is None and flops_per_token is not None and r.get("recipe") == "torchtitan":
            tflops, derived = r["tokens_per_s_per_gpu"] * flops_per_token / 1e12, "*"
        mfu = "-"
        if tflops:
            mfu = f"{tflops:.1f}{derived} ({tflops / H200_BF16_PEAK_TFLOPS:.1%}{'†' if is_fp8(r) else ''})"
        memory = r.get("peak_mem_allocated_gib") or r.get("peak_mem_active_gib")
        per_step = [s["worst_router_max_over_mean"] for s in r.get("expert_load_per_step", [])]
        last = (r.get("expert_load_last_step") or {}).get("worst_router_max_over_mean")
        routing = f"{_fmt(last, '.2f')} ({_fmt(max(per_step) if per_step else None, '.2f')})"
        out = r.get("profiled_steps_left_out") or []
        timed = f"{r.get('steps', '-')}, {f'{min(out)}-{max(out)}' if out else 'none'}"
        tps = r["tokens_per_s_per_gpu"]
        lines.append(
            f"| {label} | {tps:,.0f} | {tps / first:.2f} | {mfu} | {_fmt(memory, '.1f')} | {routing} "
            f"| {timed} |"
        )
    if flops_per_token is not None and any(r.get("recipe") == "torchtitan" for _, r in runs):
        lines.append("")
        lines.append(
            "\\* TorchTitan's tokens/s times Megatron's FLOPs per token of the same model (from the run "
            "without MTP): Megatron's formula, not TorchTitan's."
        )
    if any(is_fp8(r) for _, r in runs):
        lines.append("")
        lines.append(
            "† FP8: MFU against the BF16 dense peak, as every row; the run's result JSON gives `mfu` against "
            "the GPU's FP8 peak (twice the BF16 one, so half this figure)."
        )
    return "\n".join(lines) + "\n"


def targets(runs: dict[str, dict]) -> list[str]:
    """The issue's targets, each met or not, for each proxy run against the TorchTitan run of the same
    routing in this call (the first such run)."""
    titan: dict[str, dict] = {}
    for r in runs.values():
        if r.get("recipe") == "torchtitan":
            titan.setdefault(r.get("routing", "natural"), r)
    if not titan:
        return ["targets: no TorchTitan run in this call, so no ratio to it"]
    out = []
    for label, r in runs.items():
        if r.get("recipe") == "torchtitan":
            continue
        routing = r.get("routing", "natural")
        if routing not in titan:
            out.append(f"{label}: no TorchTitan run with {routing} routing in this call, so no ratio to it")
            continue
        ratio = r["tokens_per_s_per_gpu"] / titan[routing]["tokens_per_s_per_gpu"]
        mfu = (r.get("megatron_tflops_per_gpu") or 0) / H200_BF16_PEAK_TFLOPS
        if is_fp8(r):
            # TorchTitan's FP8 needs torchao's float8 converter, which .tt does not carry.
            label = f"{label} (FP8, against TorchTitan's BF16 run: no TorchTitan FP8 run)"
        if routing != "natural":
            label = f"{label} ({routing} routing, both)"
        if "mtp_num_layers=None" in r.get("command", ""):
            met = ratio >= 1.3 and mfu >= 0.40
            out.append(
                f"{label} (no MTP): {ratio:.2f}x TorchTitan (target 1.30x), {mfu:.1%} MFU by Megatron's "
                f"formula (target 40%): {'met' if met else 'NOT met'}"
            )
        else:
            out.append(
                f"{label} (MTP): {ratio:.2f}x TorchTitan's no-MTP tokens/s (target 1.00x): "
                f"{'met' if ratio >= 1.0 else 'NOT met'}"
            )
    return out


def report(entries: list[str]) -> str:
    runs: list[tuple[str, dict]] = []
    profiles: list[tuple[str, dict]] = []
    for entry in entries:
        label, _, paths = entry.partition("=")
        result_path, _, profile_path = paths.partition(",")
        runs.append((label, json.loads(Path(result_path).read_text())))
        if profile_path:
            profile = json.loads(Path(profile_path).read_text())
            if profile.get("steps"):
                profiles.append((label, profile))
    text = "## Throughput (one call, one run after the other)\n\n" + throughput_table(runs) + "\n"
    text += "\n".join(f"- {line}" for line in targets(dict(runs))) + "\n"
    if profiles:
        text += "\n## One steady step, kernel time by category (ms)\n\n"
        text += side_by_side([p for _, p in profiles], [label for label, _ in profiles])
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    tt = sub.add_parser("torchtitan", help="TorchTitan's log -> a result JSON")
    tt.add_argument("log")
    tt.add_argument("--out", required=True)
    tt.add_argument("--command", required=True, help="the command that ran it, for the result")
    tt.add_argument("--left-out", default="", help="profiled steps, e.g. 17-20")
    tt.add_argument("--tokens-per-step", type=int, default=8 * 4096)
    tt.add_argument("--label", default="torchtitan", help="the run's label in the tables")
    rep = sub.add_parser("report", help="results (and kernel profiles) of one call -> markdown")
    rep.add_argument("entries", nargs="+", help="LABEL=RESULT.json[,PROFILE.json]")
    rep.add_argument("--md")
    args = p.parse_args(argv)
    try:
        if args.what == "torchtitan":
            result = torchtitan_result(
                Path(args.log).read_text(errors="replace"),
                args.command,
                steps_range(args.left_out),
                args.tokens_per_step,
                args.label,
            )
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
            keys = ("tokens_per_s_per_gpu", "tokens_per_s_median", "steps")
            print(json.dumps({k: result[k] for k in keys}))
        else:
            text = report(args.entries)
            if args.md:
                Path(args.md).write_text(text)
            print(text)
    except (OSError, ValueError, KeyError) as err:
        print(f"side_by_side: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
