"""Fit the step-time model's three constants on the published runs marked ``fitted``, and report every row.

    python benchmarks/fit_step_time.py --out benchmarks/results/step_time_fit/2026-12-03.json

Each row of benchmarks/published_runs.json is rebuilt from its recipe and overrides and planned with the
committed calibration. The constants (EP efficiency over NVLink and over the scale-out network, host
time per kernel launch) minimise the squared log-ratios of the fitted rows, each within its physical
bounds; the held-out rows are only predicted. The 1-GPU checks (benchmarks/results/planner_checks/)
are predicted beside them; ``--checks DIR`` predicts only the runs of DIR (another GPU's checks) with the
committed constants, ``--calibration`` from another GPU's merged calibration (without ``--checks``: every
row from it, with the committed constants, no fit; with ``--refit`` too, the constants fitted on it: what
another GPU's cases would make of the model). Copy the constants into ``plan/step_time.py``'s ``FITTED``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import math
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dsv3_recipes.launch.submit import build_task, recipe_of  # noqa: E402
from dsv3_recipes.plan import calibration  # noqa: E402
from dsv3_recipes.plan.step_time import FITTED, Constants, step_time  # noqa: E402
from dsv3_recipes.recipe import rules  # noqa: E402
from dsv3_recipes.recipe.resolve import resolve  # noqa: E402
from dsv3_recipes.recipe.schema import Recipe  # noqa: E402
from dsv3_recipes.recipes import proxy  # noqa: E402

BOUNDS = {  # each constant's physical range
    "ep_efficiency_nvlink": (0.05, 1.0),
    "ep_efficiency_network": (0.05, 1.0),
    "host_s_per_launch": (0.0, 20e-6),
}
ROUNDS, POINTS = 6, 11  # grid refinement: rounds x points per constant


def published_rows() -> list[dict]:
    return json.loads((ROOT / "benchmarks" / "published_runs.json").read_text())["rows"]


def predict(row: dict, resolved, cal, constants: Constants) -> dict:
    t = step_time(resolved, cal, constants)
    published = row["published"]["step_time_s"]
    return {
        "id": row["id"],
        "role": row["role"],
        "published_step_time_s": published,
        "predicted_step_time_s": round(t.step_time_s, 3),
        "ratio": round(t.step_time_s / published, 3),
        "parts": {k: round(v, 3) for k, v in t.parts.items()},
        "case": t.case,
    }


def fit(rows: list[tuple[dict, object]], cal) -> Constants:
    """Coordinate-free grid refinement of the squared log-ratios over the bounds."""
    lows = {k: lo for k, (lo, _) in BOUNDS.items()}
    highs = {k: hi for k, (_, hi) in BOUNDS.items()}
    best = None
    for _ in range(ROUNDS):
        axes = [[lows[k] + (highs[k] - lows[k]) * i / (POINTS - 1) for i in range(POINTS)] for k in BOUNDS]
        for values in itertools.product(*axes):
            c = Constants(*values)
            loss = sum(
                math.log(step_time(r, cal, c).step_time_s / row["published"]["step_time_s"]) ** 2
                for row, r in rows
            )
            if best is None or loss < best[0]:
                best = (loss, c)
        for k, (lo, hi) in BOUNDS.items():  # zoom in around the best point
            span = (highs[k] - lows[k]) / (POINTS - 1)
            centre = getattr(best[1], k)
            lows[k], highs[k] = max(lo, centre - span), min(hi, centre + span)
    return best[1]


# Recipe environment added after run_recipe.py began recording each run's (its result's `env_vars`): a
# result without the record ran without these, unless its command set them (proxy_1gpu, 2026-12-07).
ENV_ADDED_SINCE = (rules.TE_GROUPED_GEMM,)


def as_it_ran(recipe: Recipe, result: dict, overrides: list[str]) -> Recipe:
    """``recipe`` (rebuilt from ``result``'s command) with the environment and the recompute the run had:
    the stand-in's key, and so the case the planner reads, depends on them."""
    if "env_vars" in result:
        env = result["env_vars"]
    else:
        env = {
            name: value
            for name, value in recipe.env_vars.items()
            if name not in ENV_ADDED_SINCE or any(o.startswith(f"env_vars.{name}=") for o in overrides)
        }
    model = recipe.model
    if "recompute" in result:
        model = dataclasses.replace(
            model,
            recompute_granularity=result["recompute"]["granularity"],
            recompute_modules=result["recompute"]["modules"],
        )
    elif (
        recipe.name == "proxy_1gpu"
        and recipe.launch.gpu_type == "h100"
        and not any(o.startswith("model.recompute_") for o in overrides)
    ):
        # A result without the record ran proxy_1gpu's H100 default of then: selective recompute, until
        # the planner counted 2 B/param of master remainders and the step fit 80 GB without (2026-12-07).
        model = dataclasses.replace(
            model, recompute_granularity="selective", recompute_modules=list(proxy.RECOMPUTE_MODULES)
        )
    return dataclasses.replace(recipe, env_vars=env, model=model)


def one_gpu_checks(directory: Path, cal: calibration.Calibration, constants: Constants) -> list[dict]:
    """Each run_recipe.py result in ``directory``, measured beside its plan."""
    checks = []
    for path in sorted(directory.glob("*.json")):
        if path.name.endswith(".profile.json"):
            continue
        result = json.loads(path.read_text())
        words = shlex.split(result["command"])[1:]  # dsv3 pretrain --factory NAME [--shrink N] k=v ...
        name = words[words.index("--factory") + 1]
        shrink = int(words[words.index("--shrink") + 1]) if "--shrink" in words else None
        overrides = [w for w in words if "=" in w and not w.startswith("-")]
        r = resolve(as_it_ran(recipe_of(build_task(name, overrides, shrink_gpus=shrink)), result, overrides))
        t = step_time(r, cal, constants)
        measured = result["step_time_s_median"]
        checks.append(
            {
                "result": str(path.relative_to(ROOT)),
                "label": result["label"],
                "gpu": result["gpu"],
                "data": result["data"]["kind"],
                "routing": result["routing"],
                "measured_step_time_s": round(measured, 4),
                "predicted_step_time_s": round(t.step_time_s, 4),
                "ratio": round(t.step_time_s / measured, 3),
                "parts": {k: round(v, 4) for k, v in t.parts.items()},
                "case": t.case,
            }
        )
    return checks


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument(
        "--checks",
        help="only predict the runs of this results directory with the committed constants (no fit)",
    )
    p.add_argument(
        "--calibration",
        help="a merged calibration of another GPU (merge_calibration.py --gpu), the reference the planner "
        "scales from, with the committed constants (no fit): with --checks, the model's check on the GPU "
        "it was calibrated on; without, every published row planned from it",
    )
    p.add_argument(
        "--refit", action="store_true", help="with --calibration: fit the constants on it (a diagnostic)"
    )
    args = p.parse_args()
    if args.refit and (args.checks or not args.calibration):
        p.error("--refit fits on another GPU's --calibration and plans the published rows (not --checks)")
    cal = (
        calibration.from_dict(json.loads(Path(args.calibration).read_text()))
        if args.calibration
        else calibration.load()
    )
    rows = []
    constants, directory = FITTED, ROOT / "benchmarks" / "results" / "planner_checks"
    if args.checks:
        directory = Path(args.checks).resolve()
    else:
        rows = [
            (row, resolve(recipe_of(build_task(row["recipe"], row["overrides"])))) for row in published_rows()
        ]
        if args.refit or not args.calibration:
            constants = fit([(row, r) for row, r in rows if row["role"] == "fitted"], cal)
    out = {
        "command": shlex.join(["python", "benchmarks/fit_step_time.py", *sys.argv[1:]]),
        "date": datetime.date.today().isoformat(),
        "calibration": {k: cal.__dict__[k] for k in ("gpu", "machine", "date", "commit")},
        "constants": dataclasses.asdict(constants),
    }
    if rows:
        out |= {"bounds": BOUNDS, "rows": [predict(row, r, cal, constants) for row, r in rows]}
    out["one_gpu_checks"] = checks = one_gpu_checks(directory, cal, constants)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    for row in out.get("rows", []) + checks:
        print(f"{row.get('role', '1gpu'):8s} {row.get('id', row.get('label')):40s} ratio {row['ratio']}")
    print("constants", out["constants"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
