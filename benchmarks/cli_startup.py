"""Start-up time of the commands a user runs dozens of times a day: `dsv3 list`, `show`, `plan`.

Each command runs ``--repeat`` times in a fresh interpreter (the first run warms the page cache and is
dropped); the result records the median and the fastest wall time, the machine, its load average
before and after (a busy machine's numbers say so) and the commit.

    python benchmarks/cli_startup.py                  # a table
    python benchmarks/cli_startup.py --save           # ... into benchmarks/results/cli_startup/
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

COMMANDS = [
    ["list"],
    ["show", "proxy_1gpu"],
    ["plan", "proxy_1gpu"],
    ["plan", "gb200_mxfp8_256gpu"],
]


def time_command(argv: list[str], repeat: int) -> list[float]:
    """Wall seconds of ``repeat`` runs after one warm-up run."""
    times = []
    for i in range(repeat + 1):
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "dsv3_recipes.cli", *argv],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        elapsed = time.perf_counter() - start
        if out.returncode != 0:
            raise SystemExit(f"dsv3 {' '.join(argv)} exited {out.returncode}: {out.stderr.decode()[-500:]}")
        if i:
            times.append(elapsed)
    return times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument(
        "--save", action="store_true", help="write benchmarks/results/cli_startup/<date>-<commit>.json"
    )
    args = p.parse_args()
    load_before = os.getloadavg()
    rows = []
    for argv in COMMANDS:
        times = time_command(argv, args.repeat)
        rows.append(
            {
                "command": "dsv3 " + " ".join(argv),
                "median_s": round(statistics.median(times), 3),
                "min_s": round(min(times), 3),
                "runs_s": [round(t, 3) for t in times],
            }
        )
        print(f"{rows[-1]['median_s']:7.2f} s median {rows[-1]['min_s']:7.2f} s min  {rows[-1]['command']}")
    if args.save:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout
        result = {
            "command": f"python benchmarks/cli_startup.py --repeat {args.repeat} --save",
            "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs)",
            "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
            "date": datetime.date.today().isoformat(),
            "commit": commit.strip(),
            "python": platform.python_version(),
            "timings": rows,
        }
        folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "cli_startup")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{result['date']}-{result['commit']}.json")
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
