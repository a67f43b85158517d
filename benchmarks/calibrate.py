"""Measure the per-layer costs the planner's step-time model reads (GPU only).

    source benchmarks/gpu_env.sh && python3 benchmarks/calibrate.py --out $OUT/calibration.json

For every recipe (the project's recipes, each published run of benchmarks/published_runs.json with its
overrides, and the 1-GPU checks) it derives the one-GPU stand-in of its ranks
(``plan.calibration.stand_in``), measures each distinct stand-in once (``train.calibrate``: its parts, then
the step around them, wrapped in Megatron's DDP and stepped by its optimizer), with Python's collector
as the recipe trains. Cases run in the order given (``PRIORITY`` first, or ``--keys``'s order), within
``--budget`` seconds, in worker processes: a case that leaves GPU memory allocated (a failed one's
tensors stay referenced) hands the keys left to a fresh worker. Each worker writes its file after every
case and the driver writes ``--out`` after every worker, so a call cut short keeps what it measured.
Merge results into ``dsv3_recipes/plan/calibration_h200.json`` with ``merge_calibration.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shlex
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dsv3_recipes import recipes  # noqa: E402
from dsv3_recipes.launch import local_gpus  # noqa: E402
from dsv3_recipes.launch.submit import build_task, recipe_of  # noqa: E402
from dsv3_recipes.plan.calibration import StandIn, part_flops, stand_in  # noqa: E402
from dsv3_recipes.recipe.resolve import resolve  # noqa: E402

# The rows the planner must get right first: the fitted published runs' recipes and the 1-GPU checks.
PRIORITY = [
    ("gb200_mxfp8_256gpu", [], None),
    ("h100_fp8_blockwise", [], None),
    ("bridge_default_1024gpu", [], None),
    ("proxy_1gpu", ["launch.gpu_type=h200"], None),
    ("h100_fp8_blockwise", ["launch.gpu_type=h200"], 1),
    ("bridge_default_1024gpu", ["launch.gpu_type=h200"], 1),
]


def published() -> list[tuple[str, list[str], None]]:
    rows = json.loads((ROOT / "benchmarks" / "published_runs.json").read_text())["rows"]
    return [(row["recipe"], row["overrides"], None) for row in rows]


def every_recipe() -> list[tuple[str, list[str], None]]:
    return [(name, [], None) for name in recipes.names() if name != "torchtitan_bf16"]  # env-driven


def stand_ins(specs: list[tuple[str, list[str], int | None]]) -> dict[str, tuple[StandIn, list[str]]]:
    """Distinct stand-ins in the order first met, each with the recipes it stands in for."""
    found: dict[str, tuple[StandIn, list[str]]] = {}
    for name, overrides, shrink in specs:
        try:
            stand = stand_in(resolve(recipe_of(build_task(name, overrides, shrink_gpus=shrink))))
        except Exception as e:  # a row the planner refuses is reported by the planner's test
            print(f"skip {name} {shlex.join(overrides)}: {e}", flush=True)
            continue
        what = f"{name}{' --shrink ' + str(shrink) if shrink else ''} {shlex.join(overrides)}".strip()
        found.setdefault(stand.key, (stand, []))[1].append(what)
    return found


def about(case: tuple[StandIn, list[str]]) -> dict:
    """A skipped or failed case's record: its shapes and the recipes it stands in for."""
    stand, used_by = case
    return {"label": stand.label, "used_by": used_by}


HELD_LIMIT_GIB = 4.0  # GPU memory a released case may leave allocated before the rest move to a new process


def keys_left(order: list[str], index: int, out_of_memory: bool) -> list[str]:
    """The keys a fresh process measures after ``order[index]`` left memory behind: those after it, and
    it again when it ran out of memory behind an earlier case (not when it was its process's first)."""
    return order[index if out_of_memory and index > 0 else index + 1 :]


def measure(args: argparse.Namespace, cases: dict[str, tuple[StandIn, list[str]]]) -> dict:
    """Measure ``cases`` in this process until one leaves memory allocated after its release (a failed
    case's tensors stay referenced); then stop and name the keys left for a fresh process."""
    import torch

    from dsv3_recipes.train import calibrate

    start = time.perf_counter()
    result = header(args.commit) | {
        "torch": torch.__version__,
        "cases": {},
        "skipped": {},
        "failed": {},
        "left": [],
    }
    out = Path(args.out)

    def save() -> None:
        out.write_text(json.dumps(result, indent=1))

    order = list(cases)
    with calibrate.quiet():
        calibrate.init_single_rank()
        t = time.perf_counter()
        result["optimizer"] = dataclasses.asdict(calibrate.measure_optimizer())
        print(f"optimizer {result['optimizer']} ({time.perf_counter() - t:.1f} s)", flush=True)
        save()
        for index, key in enumerate(order):
            stand, used_by = cases[key]
            if time.perf_counter() - start > args.budget:
                result["skipped"][key] = about(cases[key])
                continue
            t = time.perf_counter()
            out_of_memory = False
            try:
                with calibrate.as_trained(stand):
                    case = calibrate.measure_case(stand)
            except Exception as e:  # one case's failure must not lose the others
                out_of_memory = isinstance(e, torch.OutOfMemoryError)
                case = None
                result["failed"][key] = about(cases[key]) | {
                    "error": repr(e)[:400],
                    "trace": traceback.format_exc()[-1500:],
                }
                print(f"FAILED {key} {stand.label}: {e!r}"[:600], flush=True)
            calibrate.release()
            if case is not None:
                try:  # the step around the passes: a case without it keeps the planner's per-parameter Adam
                    with calibrate.as_trained(stand):
                        step = calibrate.measure_step(stand)
                    case["step"] = step | {"unwrapped_forward_backward_s": case["whole_model_s"]}
                except Exception as e:
                    out_of_memory = isinstance(e, torch.OutOfMemoryError)
                    case["step_failed"] = {"error": repr(e)[:400], "trace": traceback.format_exc()[-1500:]}
                    print(f"step of {key} FAILED: {e!r}"[:600], flush=True)
                calibrate.release()
            held = torch.cuda.memory_allocated() / 2**30
            if case is not None:
                result["cases"][key] = {
                    **case,
                    "fp8_recipe": stand.fp8_recipe,
                    "flops": part_flops(stand),
                    "used_by": used_by,
                    "seconds": round(time.perf_counter() - t, 1),
                    "held_after_gib": round(held, 2),
                }
                print(f"{key} {stand.label}: {summary(case)} ({time.perf_counter() - t:.0f} s)", flush=True)
            if out_of_memory or held > HELD_LIMIT_GIB:
                result["left"] = keys_left(order, index, out_of_memory)
                if result["left"][:1] == [key]:  # measured again in a fresh process
                    result["cases"].pop(key, None)
                    result["failed"].pop(key, None)
                print(
                    f"{held:.1f} GiB still allocated after {key}: {len(result['left'])} keys left", flush=True
                )
                save()
                break
            save()
    return result


def summary(case: dict) -> str:
    parts = {
        k: round(case[k]["forward_backward_s"] * 1e3, 2)
        for k in ("dense_layer", "moe_layer", "moe_block", "head")
    }
    step = case.get("step")
    around = (
        f", wrapped {step['wrapped_forward_backward_s'] * 1e3:.1f} ms, after backward "
        f"{step['after_backward_s'] * 1e3:.1f} ms"
        if step
        else ""
    )
    return f"{parts} ms, whole {case['whole_model_s'] * 1e3:.1f} ms{around}"


def header(commit: str) -> dict:
    """How a calibration file was made (a worker's file is one too, kept when its call is cut short)."""
    return {
        "gpu": local_gpus.gpu_type() or "unknown",  # merge_calibration.py takes only the planner's
        "command": shlex.join(["python3", "benchmarks/calibrate.py", *sys.argv[1:]]),
        "machine": local_gpus.describe(),
        "cpu": local_gpus.host_cpu(),
        "date": datetime.date.today().isoformat(),
        "commit": commit,
        "data": {"kind": "random", "note": "random hidden states and tokens; forced balanced routing"},
        "routing": "force_balanced",
        "gc": "as the recipe trains: automatic collection off under train.manual_gc",
    }


def drive(args: argparse.Namespace, cases: dict[str, tuple[StandIn, list[str]]], worker: list[str]) -> dict:
    """Every case through worker processes (``worker`` + this script's arguments): a fresh one whenever
    the last stopped with keys left or died, within the one budget; the file is written after each. The
    driver itself never touches the GPU. A worker checks the budget between cases only, so the driver
    ends one still running at the budget (its case and the rest are skipped): on 2026-12-07 a case that
    outran it ran into the device call's limit, which cut the whole command."""
    start = time.perf_counter()
    result = header(args.commit) | {"cases": {}, "skipped": {}, "failed": {}, "processes": 0}
    keys = [k for k in cases if k not in args.skip]
    out = Path(args.out)
    while keys:
        part = out.with_name(f"{out.stem}.process{result['processes']}.json")
        budget = max(0.0, args.budget - (time.perf_counter() - start))
        try:
            subprocess.run(
                [*worker, "--out", str(part), "--budget", f"{budget:.0f}", "--keys", *keys],
                check=False,
                timeout=max(budget, 1.0),
            )
            over_budget = False
        except subprocess.TimeoutExpired:  # run() has killed it
            over_budget = True
        result["processes"] += 1
        data = (
            json.loads(part.read_text())
            if part.exists()
            else {"cases": {}, "skipped": {}, "failed": {}, "left": []}
        )
        part.unlink(missing_ok=True)
        for field in ("cases", "skipped", "failed"):
            result[field].update(data[field])
        for field in ("optimizer", "torch"):
            result.setdefault(field, data.get(field))
        done = data["cases"].keys() | data["failed"].keys() | data["skipped"].keys()
        undone = data["left"] or [k for k in keys if k not in done]
        if over_budget:
            result["skipped"].update({key: about(cases[key]) for key in undone})
            undone = []
        elif not data["left"] and undone:  # the worker died inside the first case it did not record
            result["failed"][undone[0]] = about(cases[undone[0]]) | {"error": "its worker died"}
            undone = undone[1:]
        keys = undone
        out.write_text(json.dumps(result, indent=1))
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="calibration JSON to write")
    p.add_argument("--budget", type=float, default=420.0, help="seconds for the cases (the rest are skipped)")
    p.add_argument("--commit", default="unknown", help="the checkout's commit (the GPU copy has no .git)")
    p.add_argument("--only-priority", action="store_true", help="only the fitted rows and the 1-GPU checks")
    p.add_argument("--skip", nargs="*", default=[], help="case keys not to measure (measured before)")
    p.add_argument("--keys", nargs="*", help="only these case keys, in this order")
    p.add_argument("--worker", action="store_true", help="measure in this process (the driver starts it)")
    args = p.parse_args()

    specs = PRIORITY + ([] if args.only_priority else published() + every_recipe())
    cases = stand_ins(specs)
    print(f"{len(cases)} distinct stand-ins", flush=True)
    if args.keys is not None:
        unknown = [k for k in args.keys if k not in cases]
        if unknown:
            p.error(f"--keys: no stand-in has key {', '.join(unknown)}")
        cases = {k: cases[k] for k in args.keys}
    if args.worker:
        Path(args.out).write_text(json.dumps(measure(args, cases), indent=1))
        return 0
    worker = [sys.executable, str(Path(__file__).resolve()), "--worker", "--commit", args.commit]
    result = drive(args, cases, worker + ["--only-priority"] * args.only_priority)
    print(
        f"done: {len(result['cases'])} measured, {len(result['failed'])} failed, "
        f"{len(result['skipped'])} skipped, {result['processes']} processes",
        flush=True,
    )
    return 0 if result["cases"] and not result["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
