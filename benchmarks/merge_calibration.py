"""Merge calibration calls into the file the planner reads (dsv3_recipes/plan/calibration_h200.json).

    python benchmarks/merge_calibration.py benchmarks/results/calibration/2026-12-03-h200-second-call.json \
        benchmarks/results/calibration/2026-12-03-h200-first-call.json

Earlier files win for a case both measured (give the best-set-up call first). Each case is keyed anew
from the recipes it stood in for (``used_by``), so a call made before a change of the case key still
serves, and says how it was set up (``provenance``). A part profiled before its kernels were compiled
(the profile came before the timing's warm-up: thousands of launches, no GEMM share) takes its kernel
shares and launch count from the same part of a case of the same shapes in BF16, if one was measured,
and says so (``repaired``); its timing, taken after warm-up, is kept. A call made on another GPU than
the planner's measured one (an H100 when no H200 was lent) is refused unless ``--gpu`` names it and
``--out`` is another file: a diagnostic, not the planner's data.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dsv3_recipes.launch.submit import build_task, recipe_of  # noqa: E402
from dsv3_recipes.plan.calibration import CALIBRATION_FILE, MEASURED_GPU, PARTS, part_flops, stand_in  # noqa: E402
from dsv3_recipes.recipe.resolve import resolve  # noqa: E402

POLLUTED_LAUNCHES = 3000  # no warmed-up part launches more than a few hundred kernels per pass
TWIN_LAUNCH_RATIO = 3  # FP8's quantization kernels add launches, but not three times BF16's
SETUP = {  # what the call's benchmark did before timing, by the commit it ran
    "ecccdae985ccea614981eb18155b373abd1651bc": (
        "built without the recipe's environment and without Megatron-Core's experimental switch "
        "(MLA RoPE unfused; FP8 cases failed)"
    ),
    "1f308c8d81b2b843191796773aee1d0d5c496318": "built as the train entry builds it",
    "9346d3ca35fab41bf03c377dd9b46355df004dae": (
        "built as the train entry builds it, on the machine of the 1-GPU checks beside it"
    ),
    "a73ceb84e5f62be26eafd001a109955372f5a819": (
        "built as the train entry builds it, on the machine of the 1-GPU checks beside it; with the step "
        "around the passes (DDP wrapper, FP8 parameters, distributed optimizer)"
    ),
    "f9ee834e3f6984c42ea77a5ebf85774dbc411698": (
        "built as the train entry builds it, on the machine of the 1-GPU checks beside it; with the step "
        "around the passes; automatic garbage collection on (the train loop has it off); call a in one "
        "process, calls b and c one process per case"
    ),
    "97477af9d843a34d290a50345b459ffd9bdaa20e": (
        "built as the train entry builds it, with the step around the passes; the collector as the recipe "
        "trains (automatic collection off); worker processes"
    ),
    "211572b10051218a9690117f71ffd1200d00d53b": (
        "built as the train entry builds it, with the step around the passes; the collector as the recipe "
        "trains; worker processes; each part's kernel time (kernel_s), profiled after its timed passes"
    ),
    "892dbccef5596b16989a96de5e738ce814999c6c": (
        "built as the train entry builds it, with the step around the passes; the collector as the recipe "
        "trains; worker processes; kernel times; cuBLASLt 13.6 loaded (benchmarks/gpu_cublas.sh); the "
        "proxy's case failed (no grouped-GEMM shim in the benchmark until the next commit)"
    ),
    "ed9ef8c1d869e05708dedf0c1d979498f7a81d71": (
        "built as the train entry builds it (its grouped-GEMM shim too), with the step around the passes; "
        "the collector as the recipe trains; worker processes, ended at the budget; kernel times; cuBLASLt "
        "13.6 loaded; on the machine of the 1-GPU checks beside it"
    ),
}


def setup_of(commit: str) -> str:
    """A call names its commit in full or by a prefix (``--commit`` as typed on the GPU machine)."""
    (setup,) = [text for full, text in SETUP.items() if full.startswith(commit)]
    return setup


def spec_stand_in(spec: str):
    words = shlex.split(spec)
    name, rest = words[0], words[1:]
    shrink = None
    if rest[:1] == ["--shrink"]:
        shrink, rest = int(rest[1]), rest[2:]
    return stand_in(resolve(recipe_of(build_task(name, rest, shrink_gpus=shrink))))


def polluted(part: dict, twin: dict | None) -> bool:
    """Profiled while its kernels compiled: far more launches than warmed-up passes make."""
    if part["kernels"] > POLLUTED_LAUNCHES or part["kernels"] < 0:
        return True
    return twin is not None and part["kernels"] > TWIN_LAUNCH_RATIO * twin["kernels"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("calls", nargs="+", help="calibration JSON files of benchmarks/calibrate.py, best first")
    package_file = ROOT / "dsv3_recipes" / "plan" / CALIBRATION_FILE
    p.add_argument("--out", default=str(package_file))
    p.add_argument(
        "--gpu",
        default=MEASURED_GPU,
        help="the GPU the calls were measured on; another than the planner's only into another --out "
        "(a diagnostic for fit_step_time.py --checks --calibration)",
    )
    args = p.parse_args()
    if args.gpu != MEASURED_GPU and Path(args.out).resolve() == package_file:
        p.error(f"--gpu {args.gpu}: the planner's file holds {MEASURED_GPU} measurements only")
    merged: dict[str, dict] = {}
    calls = []
    for path in args.calls:
        data = json.loads(Path(path).read_text())
        if data["gpu"] != args.gpu:  # the planner scales other GPUs from the one it measured
            print(f"{path}: measured on {data['gpu']}, not {args.gpu}: not merged", file=sys.stderr)
            return 2
        rel = str(Path(path).resolve().relative_to(ROOT))
        calls.append({k: data[k] for k in ("command", "machine", "date", "commit")} | {"file": rel})
        for old_key, case in data["cases"].items():
            stand = spec_stand_in(case["used_by"][0])
            if stand.key in merged:
                continue
            merged[stand.key] = case | {
                "label": stand.label,
                "fp8_recipe": stand.fp8_recipe,
                "flops": part_flops(stand),
                "provenance": {"file": rel, "key_then": old_key, "setup": setup_of(data["commit"])},
            }
    clean_twin = {c["label"].replace(c["fp8_recipe"] or "bf16", "bf16"): c for c in merged.values()}
    for case in merged.values():
        twin = clean_twin.get(case["label"].replace(case["fp8_recipe"] or "bf16", "bf16"))
        for name in (*PARTS, "mtp"):
            part = case[name]
            twin_part = twin[name] if twin is not None and twin is not case else None
            if part is None or not polluted(part, twin_part):
                continue
            if twin_part is None or polluted(twin_part, None):
                case.setdefault("unrepaired", []).append(name)
                continue
            part.update({k: twin[name][k] for k in ("gemm_share", "attention_share", "kernels")})
            case.setdefault("repaired", []).append(f"{name}: shares and launches of {twin['label']}")
    first = json.loads(Path(args.calls[0]).read_text())
    out = {
        "gpu": first["gpu"],
        "command": shlex.join(["python", "benchmarks/merge_calibration.py", *sys.argv[1:]]),
        "machine": first["machine"],
        "date": first["date"],
        "commit": first["commit"],
        "data": first["data"],
        "routing": first["routing"],
        "calls": calls,
        "optimizer": first["optimizer"],
        "cases": merged,
    }
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"{len(merged)} cases -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
