"""The NeMo-Run internals this project relies on, in one place (NeMo-Run 0.11.1 has no public API for
them); tests/test_nemo_run_internals.py pins the version they were read from and checks each.

- ``Experiment._add_single_job`` takes ``task.clone()`` of every task it adds (``run.run`` and
  ``Experiment.add``, dry run or not): ``recipes.common.PretrainTask.clone`` checks the recipe there.
- An experiment's id (``Experiment._id``), which ``nemo experiment status/logs`` take, and its
  directory (``Experiment._exp_dir``), which a kept dry run leaves for ``sbatch FILE``.
- A dry run's rendered request (``Job._dryrun_info``): the sbatch script or the local app.
"""

from __future__ import annotations

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
