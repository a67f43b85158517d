"""The record of a CPU benchmark (``benchmarks/cli_startup.py``, ``benchmarks/validation_calls.py``):
the command as typed, the machine, date and commit, and its data condition, written once for both."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NO_MODEL = {"kind": "none", "note": "CPU only: no model is trained, no token is routed"}


def in_repo(text: str) -> str:
    """``text`` with this checkout's absolute paths made relative to its root, as results record them
    (a command so recorded runs from the repository's root)."""
    return text.replace(REPO + os.sep, "")


def save(folder: str, before: str | None, before_commit: str | None, **fields: object) -> str:
    """Write ``folder/<date>-<commit>.json`` and return its path; ``fields`` are the benchmark's own."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    result = {
        "command": shlex.join(["python", os.path.relpath(os.path.abspath(sys.argv[0]), REPO), *sys.argv[1:]]),
        "before": before and f"{before} (a checkout of {before_commit})",
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs)",
        "date": datetime.date.today().isoformat(),
        "commit": commit.strip(),
        "data": NO_MODEL,
        "routing": "none",
        **fields,
    }
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{result['date']}-{result['commit']}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    return path
