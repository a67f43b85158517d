"""Throughput of recorded runs by Megatron's clock (``dsv3_recipes.report.wall_clock``), each recipe rebuilt
from its result's command.

    python benchmarks/wall_clock.py benchmarks/results/h200_text*/*.json > OUT.json
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from dsv3_recipes.cli import recipe_of_command
from dsv3_recipes.report.wall_clock import wall_clock


def main(paths: list[str]) -> int:
    if not paths:
        print("usage: wall_clock.py RESULT.json...", file=sys.stderr)
        return 2
    rows = [wall_clock(Path(p), recipe_of_command(json.loads(Path(p).read_text())["command"])) for p in paths]
    print(
        json.dumps(
            {"command": shlex.join(["python", "benchmarks/wall_clock.py", *paths]), "runs": rows}, indent=1
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
