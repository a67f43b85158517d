"""What one full Python garbage collection costs once Megatron-Bridge, Megatron-Core and TE are loaded.

    python benchmarks/gc_cost.py --out benchmarks/results/gc_cost/DATE.json

Megatron's train loop turns automatic collection off (``train.manual_gc``) and collects between steps;
a timing with it on pays this cost inside whatever it times (``train.calibrate.as_trained``).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dsv3_recipes.launch import local_gpus  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    args = p.parse_args()
    import megatron.bridge.models  # noqa: F401  the modules a train process holds, no model built
    import megatron.core.models.gpt  # noqa: F401
    import transformer_engine.pytorch  # noqa: F401

    times = []
    for _ in range(3):
        start = time.perf_counter()
        gc.collect()
        times.append(round((time.perf_counter() - start) * 1e3, 1))
    result = {
        "command": shlex.join(["python", "benchmarks/gc_cost.py", *sys.argv[1:]]),
        "date": datetime.date.today().isoformat(),
        "machine": local_gpus.describe(),
        "cpu": local_gpus.host_cpu(),
        "python": sys.version.split()[0],
        "tracked_objects": len(gc.get_objects()),
        "full_collection_ms": times,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"{result['tracked_objects']:,} objects tracked; a full collection takes {times} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
