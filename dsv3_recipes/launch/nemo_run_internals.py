"""The NeMo-Run internals this project relies on, in one place (NeMo-Run 0.11.1 has no public API for
them); tests/test_nemo_run_internals.py pins the version they were read from and checks each.

- ``Experiment._add_single_job`` takes ``task.clone()`` of every task it adds (``run.run`` and
  ``Experiment.add``, dry run or not): ``recipes.common.PretrainTask.clone`` checks the recipe there.
- ``_add_single_job``'s local ``executor`` (already cloned) while it takes that clone: the clone
  compares the recipe's GPUs with the executor's (``adding_executor``).
- An experiment's id (``Experiment._id``), which ``nemo experiment status/logs`` take, and its
  directory (``Experiment._exp_dir``), which a kept dry run leaves for ``sbatch FILE``.
- A dry run's rendered request (``Job._dryrun_info``): the sbatch script or the local app.
- ``RunContext._execute_task(fn, task_args)``, the step of NeMo-Run's CLI that runs a task once the
  executor is parsed: ``nemo_cli`` submits a Slurm task there as ``dsv3 pretrain -e slurm`` does.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import nemo_run as run

NEMO_RUN_VERSION = "0.11.1"  # the release these were read from (pyproject.toml pins it)


def experiment_id(exp: run.Experiment) -> str:
    return exp._id


def experiment_dir(exp: run.Experiment) -> str:
    return exp._exp_dir


def dryrun_request(exp: run.Experiment) -> object:
    """The request the first job's dry run rendered (``exp.dryrun()`` first)."""
    return exp.jobs[0]._dryrun_info.request


def adding_executor() -> run.Executor | None:
    """The executor ``Experiment._add_single_job`` adds the task being cloned with, else None."""
    frame = inspect.currentframe()
    while frame is not None:
        if (
            frame.f_code.co_name == "_add_single_job"
            and frame.f_globals.get("__name__") == "nemo_run.run.experiment"
        ):
            return frame.f_locals.get("executor")
        frame = frame.f_back
    return None
