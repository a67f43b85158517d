"""The NeMo-Run internals launch.nemo_run_internals reads: pinned to the release they were read from,
and each checked against that release."""

import importlib.metadata
import inspect
import typing

import nemo_run as run
import pytest

from dsv3_recipes import recipes
from dsv3_recipes.launch import executors, nemo_run_internals
from dsv3_recipes.launch.submit import recipe_of
from dsv3_recipes.recipe.schema import RecipeError


def test_pinned_to_the_installed_release():
    assert importlib.metadata.version("nemo_run") == nemo_run_internals.NEMO_RUN_VERSION


def test_adding_a_task_takes_its_clone_which_checks_the_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("NEMORUN_HOME", str(tmp_path))
    task = recipes.get("proxy_1gpu")
    task.recipe.train.global_batch_size = 12  # not a multiple of MBS 8 x DP 1
    with pytest.raises(RecipeError, match=r"^train.global_batch_size: "):
        run.run(task, executor=run.LocalExecutor(), dryrun=True)


def test_experiment_id_and_dryrun_request(tmp_path, monkeypatch):
    monkeypatch.setenv("NEMORUN_HOME", str(tmp_path))
    task = recipes.get("proxy_1gpu")
    executor = executors.for_recipe("slurm", recipe_of(task), account="a")
    with run.Experiment("probe", log_level="ERROR") as exp:
        exp.add(task, executor=executor, name="probe")
        exp.dryrun(log=False)
    assert nemo_run_internals.experiment_id(exp).startswith("probe_")
    assert "#SBATCH --account=a" in nemo_run_internals.dryrun_request(exp).materialize()


class Probe(run.Partial):
    """A task that records what ``adding_executor`` sees when NeMo-Run clones it."""

    seen: typing.ClassVar[list] = []

    def clone(self):
        Probe.seen.append(nemo_run_internals.adding_executor())
        return super().clone()


def test_adding_a_task_clones_it_while_its_executor_is_at_hand(tmp_path, monkeypatch):
    """``adding_executor``: the executor ``_add_single_job`` holds while it takes ``task.clone()``."""
    monkeypatch.setenv("NEMORUN_HOME", str(tmp_path))
    with run.Experiment("probe", log_level="ERROR") as exp:
        exp.add(Probe(dict), executor=run.LocalExecutor(ntasks_per_node=3), name="probe")
    (seen,) = Probe.seen
    assert isinstance(seen, run.LocalExecutor) and seen.ntasks_per_node == 3
    assert nemo_run_internals.adding_executor() is None


def test_the_cli_runs_a_parsed_task_in_execute_task():
    """``nemo_cli.CheckedRunContext`` overrides ``_execute_task``: NeMo-Run's ``cli_execute`` calls it
    with the task's arguments once it has parsed the executor (``parse_args``)."""
    source = inspect.getsource(run.cli.RunContext.cli_execute)
    assert source.index("self.parse_args(") < source.index("self._execute_task(fn, filtered_args)")
    assert list(inspect.signature(run.cli.RunContext._execute_task).parameters) == ["self", "fn", "task_args"]
