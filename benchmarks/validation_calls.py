"""How often each door validates: calls of validate, plan and check_types per command.

Every door (``dsv3 show/plan/pretrain``, a notebook's ``run.run``) should validate a recipe once. Each
command runs in a fresh interpreter (factories are cached per process) with ``sys.monitoring`` counting
the three functions' starts, whatever name a module imported them under.

    python benchmarks/validation_calls.py                # every door, a table
    python benchmarks/validation_calls.py --save         # ... into benchmarks/results/validation_calls/
    python benchmarks/validation_calls.py --before DIR --before-commit C --save   # ... and another checkout
    python benchmarks/validation_calls.py --one show proxy_1gpu --json   # one command's counts, as JSON
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import subprocess
import sys

from dsv3_recipes.report import cpu_result

COUNTED = {
    "validate": ("dsv3_recipes.plan.validate", "validate"),
    "plan": ("dsv3_recipes.plan.preflight", "plan"),
    "check_types": ("dsv3_recipes.recipe.schema", "check_types"),
}
NOTEBOOK = "notebook: run.run(recipes.get('proxy_1gpu'), executor=run.LocalExecutor(), dryrun=True)"
DOORS = [
    ["show", "proxy_1gpu", "--json"],
    ["plan", "proxy_1gpu"],
    ["plan", "gb200_mxfp8_256gpu"],
    ["pretrain", "-f", "proxy_1gpu", "--dryrun"],
    [
        "pretrain",
        "-f",
        "gb200_mxfp8_256gpu",
        "-e",
        "slurm",
        "--account",
        "A",
        "--dryrun",
        "dataset.mock=True",
        "logger.wandb_project=None",
        "checkpoint.save=/lustre/ckpt",
    ],
    ["show", "gb200_mxfp8_256gpu", "--shrink", "1", "--json"],
    [NOTEBOOK],
]


def count(argv: list[str]) -> dict[str, int]:
    """Run one command here and count the calls."""
    import importlib

    codes = {getattr(importlib.import_module(m), f).__code__: name for name, (m, f) in COUNTED.items()}
    counts: collections.Counter[str] = collections.Counter({name: 0 for name in COUNTED})
    mon = sys.monitoring
    mon.use_tool_id(mon.PROFILER_ID, "validation_calls")

    def started(code, offset):
        name = codes.get(code)
        if name is None:
            return mon.DISABLE
        counts[name] += 1

    mon.register_callback(mon.PROFILER_ID, mon.events.PY_START, started)
    mon.set_events(mon.PROFILER_ID, mon.events.PY_START)
    with contextlib.redirect_stdout(io.StringIO()):
        if argv == [NOTEBOOK]:
            import nemo_run as run

            from dsv3_recipes import recipes

            run.run(recipes.get("proxy_1gpu"), executor=run.LocalExecutor(), dryrun=True)
            rc = 0
        else:
            from dsv3_recipes import cli

            rc = cli.main(argv)
    mon.set_events(mon.PROFILER_ID, 0)
    if rc != 0:
        raise SystemExit(f"{' '.join(argv)} exited {rc}")
    return dict(counts)


def count_in_fresh_process(argv: list[str], checkout: str | None = None) -> dict[str, int]:
    """Counts of one command in a fresh interpreter, on ``checkout``'s package (default: this one)."""
    env = {
        "NEMORUN_HOME": "/tmp/validation_calls_nemorun",
        "DSV3_IMAGE_REGISTRY": "registry.example.com/team",
    }
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--one", *argv],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
        cwd=checkout,
        env=env | os.environ | ({"PYTHONPATH": checkout} if checkout else {}),
    )
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--one", nargs=argparse.REMAINDER, help="count one command and print JSON")
    p.add_argument(
        "--save", action="store_true", help="write benchmarks/results/validation_calls/<date>.json"
    )
    p.add_argument("--before", metavar="DIR", help="another checkout of the package to count as well")
    p.add_argument("--before-commit", default="?", help="the commit --before holds, for the result")
    args = p.parse_args()
    if args.one is not None:
        print(json.dumps(count(args.one)))
        return 0
    rows = []
    for argv in DOORS:
        command = argv[0] if argv == [NOTEBOOK] else "dsv3 " + " ".join(argv)
        row = {"command": command, **count_in_fresh_process(argv)}
        if args.before:
            row["before"] = count_in_fresh_process(argv, args.before)
        rows.append(row)
        before = f"  (before: {row['before']})" if args.before else ""
        print(f"{row['validate']:9d} {row['plan']:5d} {row['check_types']:12d}  {command}{before}")
    if args.save:
        folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "validation_calls")
        path = cpu_result.save(
            folder,
            args.before,
            args.before_commit,
            counts=rows,
        )
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
