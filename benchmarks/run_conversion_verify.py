"""Convert a tiny DeepSeek-V3 on this GPU machine and record the result (conversion.selfcheck: import,
logits against transformers, greedy generation, export bit-exact against the source).

    python3 benchmarks/run_conversion_verify.py [--results-dir DIR]             # one GPU
    torchrun --nproc-per-node 2 benchmarks/run_conversion_verify.py --ep 2      # two GPUs
    torchrun --nproc-per-node 2 benchmarks/run_conversion_verify.py --pp 2 --num-layers 4

Writes <results-dir>/<date>-<gpu>-conversion-verify[-tpX-ppY-epZ].json. The tiny model is made here
(no network) under --workdir, which every rank must see and which is removed afterwards. Exits
non-zero if the check failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
from importlib import metadata
from pathlib import Path

import torch

from conversion import selfcheck
from conversion.checks import Parallelism
from dsv3_recipes.recipe import hardware

PACKAGES = ("torch", "megatron-core", "megatron-bridge", "transformer-engine", "transformers")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--ep", type=int, default=1)
    p.add_argument(
        "--num-layers", type=int, default=3, help="the tiny model's decoder layers (PP divides them)"
    )
    p.add_argument("--results-dir", default=str(Path(__file__).parent / "results"))
    p.add_argument("--workdir", default="/tmp/dsv3-conversion-check", help="must be absent or empty")
    args = p.parse_args()

    parallel = Parallelism(args.tp, args.pp, args.ep)
    workdir = Path(args.workdir)
    result = selfcheck.run(workdir, parallel, num_hidden_layers=args.num_layers)
    if result is None:  # not rank 0
        return 0
    shutil.rmtree(workdir)  # every rank is past the last collective
    gpu = torch.cuda.get_device_name()
    layout = "" if parallel == Parallelism() else f"-tp{args.tp}-pp{args.pp}-ep{args.ep}"
    date = datetime.date.today().isoformat()
    record = {
        "date": date,
        "gpu": gpu,
        "num_gpus": parallel.world_size,
        "command": " ".join(sys.argv),
        "versions": {name: metadata.version(name) for name in PACKAGES},
        **result.to_dict(),
    }
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{date}-{hardware.detect(gpu).name.lower()}-conversion-verify{layout}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    print(f"{'PASSED' if result.passed else 'FAILED'}: wrote {path}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
