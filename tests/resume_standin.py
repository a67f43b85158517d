"""A CPU stand-in for the train entry in the Slurm requeue and restart tests (tests/test_slurm_cluster.py).

It resumes the way Megatron-Bridge does under ``pretrain``: from the iteration that ``checkpoint.load``'s
tracker file (``latest_checkpointed_iteration.txt``) names, else from step 0; and it saves the way
Megatron does, every ``checkpoint.save_interval`` steps into ``checkpoint.save``: the iteration's
directory first, then the tracker. Only the training is missing: a step is a sleep. The job imports it
from the tests directory (the test puts it on the job's PYTHONPATH).
"""

from __future__ import annotations

import os
import sys
import time

from dsv3_recipes.recipe.checkpoints import TRACKER, iteration_dir, latest_iteration
from dsv3_recipes.recipe.schema import Recipe


def train(recipe: Recipe, step_seconds: float = 0.5, steps_per_start: int | None = None) -> None:
    """Count steps to ``train.train_iters``; ``steps_per_start``: crash (exit 1) after that many steps
    of each start, like a job that keeps failing."""
    c = recipe.checkpoint
    start = int(latest_iteration(c.load) or 0) if c.load else 0
    restart = os.environ.get("SLURM_RESTART_COUNT", "0")
    print(f"STANDIN start {restart}: resumed from {c.load} at iteration {start}", flush=True)
    for step in range(start + 1, recipe.train.train_iters + 1):
        if steps_per_start is not None and step > start + steps_per_start:
            print(f"STANDIN start {restart}: crashed before step {step}", flush=True)
            sys.exit(1)
        time.sleep(step_seconds)
        print(f"STANDIN step {step}", flush=True)
        if c.save_interval and step % c.save_interval == 0:
            os.makedirs(iteration_dir(c.save, str(step)), exist_ok=True)
            tracker = os.path.join(c.save, TRACKER)
            with open(tracker + ".tmp", "w") as f:
                f.write(str(step))
            os.replace(tracker + ".tmp", tracker)


def array_task(directory: str) -> None:
    """One task of a job array: records its index and its array's job id."""
    index, job = os.environ["SLURM_ARRAY_TASK_ID"], os.environ["SLURM_ARRAY_JOB_ID"]
    with open(os.path.join(directory, f"task-{index}"), "w") as f:
        f.write(job)
