"""Start-up time of the commands a user runs dozens of times a day: `dsv3 list`, `show`, `plan`.

Each command runs ``--repeat`` times in a fresh interpreter (the first run warms the page cache and is
dropped); the result records the median and the fastest wall time, the machine, its load average
before and after (a busy machine's numbers say so) and the commit. ``--before DIR`` times the same
commands on another checkout of the package too (``git archive COMMIT | tar -x -C DIR``), each run of
it next to one of this checkout, so that both see the same load.

    python benchmarks/cli_startup.py                           # a table
    python benchmarks/cli_startup.py --before /tmp/base --save  # ... into benchmarks/results/cli_startup/
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

from dsv3_recipes.report import cpu_result

COMMANDS = [
    ["list"],
    ["show", "proxy_1gpu"],
    ["plan", "proxy_1gpu"],
    ["plan", "gb200_mxfp8_256gpu"],
]


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def time_once(argv: list[str], checkout: str) -> float:
    """Wall seconds of one ``dsv3`` command run from ``checkout``'s package."""
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "dsv3_recipes.cli", *argv],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        check=False,
        cwd=checkout,
        env=os.environ | {"PYTHONPATH": checkout},
    )
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"dsv3 {' '.join(argv)} exited {out.returncode}: {out.stderr.decode()[-500:]}")
    return elapsed


def summary(times: list[float]) -> dict[str, object]:
    return {
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "runs_s": [round(t, 3) for t in times],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--before", metavar="DIR", help="another checkout to time beside this one")
    p.add_argument("--before-commit", default="?", help="the commit --before holds, for the result")
    p.add_argument(
        "--save", action="store_true", help="write benchmarks/results/cli_startup/<date>-<commit>.json"
    )
    args = p.parse_args()
    load_before = os.getloadavg()
    rows = []
    for argv in COMMANDS:
        times: dict[str, list[float]] = {"after": [], "before": []}
        for i in range(args.repeat + 1):  # the first of each is a warm-up
            for label, checkout in (("after", ROOT), ("before", args.before)):
                if checkout:
                    elapsed = time_once(argv, checkout)
                    if i:
                        times[label].append(elapsed)
        row = {"command": "dsv3 " + " ".join(argv), **summary(times["after"])}
        if args.before:
            row["before"] = summary(times["before"])
        rows.append(row)
        before = f"  (before: {row['before']['median_s']:.2f} s median)" if args.before else ""
        print(f"{row['median_s']:7.2f} s median {row['min_s']:7.2f} s min  {row['command']}{before}")
    if args.save:
        folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "cli_startup")
        path = cpu_result.save(
            folder,
            args.before,
            args.before_commit,
            load_average_before_after=[round(load_before[0], 2), round(os.getloadavg()[0], 2)],
            python=platform.python_version(),
            timings=rows,
        )
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
