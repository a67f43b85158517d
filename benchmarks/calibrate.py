"""Measure the per-layer costs the planner's step-time model reads (GPU only).

    source benchmarks/gpu_env.sh && python3 benchmarks/calibrate.py --out $OUT/calibration.json

For every recipe (the project's recipes, each published run of benchmarks/published_runs.json with its
overrides, and the 1-GPU checks) it derives the one-GPU stand-in of its ranks
(``plan.calibration.stand_in``), measures each distinct stand-in once (``train.calibrate``: its parts, then
the step around them, wrapped in Megatron's DDP and stepped by its optimizer), and writes
the calibration file after every case, so that a call cut short keeps what it measured. Cases run in
the order given (``PRIORITY`` first, or ``--keys``'s order), within ``--budget`` seconds. Copy the result to
``dsv3_recipes/plan/calibration_h200.json`` to make the planner read it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shlex
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dsv3_recipes import recipes  # noqa: E402
from dsv3_recipes.launch import local_gpus  # noqa: E402
from dsv3_recipes.launch.submit import build_task, recipe_of  # noqa: E402
from dsv3_recipes.plan.calibration import MEASURED_GPU, StandIn, part_flops, stand_in  # noqa: E402
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="calibration JSON to write")
    p.add_argument("--budget", type=float, default=420.0, help="seconds for the cases (the rest are skipped)")
    p.add_argument("--commit", default="unknown", help="the checkout's commit (the GPU copy has no .git)")
    p.add_argument("--only-priority", action="store_true", help="only the fitted rows and the 1-GPU checks")
    p.add_argument("--skip", nargs="*", default=[], help="case keys not to measure (measured before)")
    p.add_argument("--keys", nargs="*", help="only these case keys, in this order")
    args = p.parse_args()

    import torch

    from dsv3_recipes.train import calibrate

    start = time.perf_counter()
    specs = PRIORITY + ([] if args.only_priority else published() + every_recipe())
    cases = stand_ins(specs)
    print(f"{len(cases)} distinct stand-ins", flush=True)
    if args.keys is not None:
        unknown = [k for k in args.keys if k not in cases]
        if unknown:
            p.error(f"--keys: no stand-in has key {', '.join(unknown)}")
        cases = {k: cases[k] for k in args.keys}
    result = {
        "gpu": MEASURED_GPU,
        "command": shlex.join(["python3", "benchmarks/calibrate.py", *sys.argv[1:]]),
        "machine": local_gpus.describe(),
        "date": datetime.date.today().isoformat(),
        "commit": args.commit,
        "torch": torch.__version__,
        "data": {"kind": "random", "note": "random hidden states and tokens; forced balanced routing"},
        "routing": "force_balanced",
        "cases": {},
        "skipped": {},
        "failed": {},
    }
    out = Path(args.out)

    def save() -> None:
        out.write_text(json.dumps(result, indent=1))

    with calibrate.quiet():
        calibrate.init_single_rank()
        t = time.perf_counter()
        result["optimizer"] = dataclasses.asdict(calibrate.measure_optimizer())
        print(f"optimizer {result['optimizer']} ({time.perf_counter() - t:.1f} s)", flush=True)
        save()
        for key, (stand, used_by) in cases.items():
            if key in args.skip:
                continue
            if time.perf_counter() - start > args.budget:
                result["skipped"][key] = {"label": stand.label, "used_by": used_by}
                continue
            t = time.perf_counter()
            try:
                with calibrate.recipe_env(stand.env):
                    case = calibrate.measure_case(stand)
            except Exception as e:  # one case's failure must not lose the others
                calibrate.release()
                result["failed"][key] = {
                    "label": stand.label,
                    "used_by": used_by,
                    "error": repr(e)[:400],
                    "trace": traceback.format_exc()[-1500:],
                }
                print(f"FAILED {key} {stand.label}: {e!r}"[:600], flush=True)
                save()
                continue
            calibrate.release()
            try:  # the step around the passes: a case without it keeps the planner's per-parameter Adam
                with calibrate.recipe_env(stand.env):
                    step = calibrate.measure_step(stand)
                case["step"] = step | {"unwrapped_forward_backward_s": case["whole_model_s"]}
            except Exception as e:
                case["step_failed"] = {"error": repr(e)[:400], "trace": traceback.format_exc()[-1500:]}
                print(f"step of {key} FAILED: {e!r}"[:600], flush=True)
            calibrate.release()
            result["cases"][key] = {
                **case,
                "fp8_recipe": stand.fp8_recipe,
                "flops": part_flops(stand),
                "used_by": used_by,
                "seconds": round(time.perf_counter() - t, 1),
            }
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
            print(
                f"{key} {stand.label}: {parts} ms, whole {case['whole_model_s'] * 1e3:.1f} ms{around} "
                f"({time.perf_counter() - t:.0f} s)",
                flush=True,
            )
            save()
    print(
        f"done: {len(result['cases'])} measured, {len(result['failed'])} failed, "
        f"{len(result['skipped'])} skipped, {time.perf_counter() - start:.0f} s",
        flush=True,
    )
    return 0 if result["cases"] and not result["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
