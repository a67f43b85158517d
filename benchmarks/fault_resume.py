"""Kill and resume, as a command: ``dsv3_recipes.report.fault_resume`` runs and judges the cases.

python benchmarks/fault_resume.py [--cases ...] [--results-dir DIR] [--work DIR] [--gpu NAME]
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

from dsv3_recipes.launch import local_gpus
from dsv3_recipes.report.fault_resume import CHOICES, CONDITION, run_cases


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", choices=CHOICES, default=CHOICES)
    p.add_argument("--results-dir", default=str(Path(__file__).parent / "results"))
    p.add_argument("--work", default="/tmp/dsv3-fault-resume")
    p.add_argument("--gpu", default="h200", help="GPU name for the result file")
    args = p.parse_args()
    work, out = Path(args.work), Path(args.results_dir)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "command": shlex.join(["python", "benchmarks/fault_resume.py", *sys.argv[1:]]),
        "machine": local_gpus.describe(),
        "date": datetime.date.today().isoformat(),
        "gpu": args.gpu,
        **CONDITION,
        **run_cases(args.cases, work, out),
    }
    path = out / f"{results['date']}-{args.gpu}-resume.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    failed = [n for n in args.cases if not results[n]["passed"]]  # type: ignore[index]
    print(json.dumps(results, indent=1))
    print(f"fault_resume: {'FAILED ' + ', '.join(failed) if failed else 'all cases passed'} -> {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
