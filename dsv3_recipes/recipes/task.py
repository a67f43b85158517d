"""A factory's fiddle task as NeMo-Run's: what ``run.run``, ``Experiment.add`` and NeMo-Run's YAML take.

Factories build ``fdl.Partial(pretrain, recipe=fdl.Config[Recipe])`` without NeMo-Run (its import takes
seconds); ``as_task`` makes the ``PretrainTask`` of it where a task is launched, exported or handed to a
notebook (``recipes.get``, ``recipes.proxy_1gpu()``, the NeMo-Run factory registry).
"""

from __future__ import annotations

import fiddle as fdl
import nemo_run as run
import nemo_run.core.serialization.yaml  # noqa: F401  (registers run.Partial's YAML representer)
import yaml

from dsv3_recipes.plan.preflight import check_launch
from dsv3_recipes.plan.validate import built


class PretrainTask(run.Partial):
    """``run.Partial(pretrain, recipe=run.Config[Recipe])`` that checks its recipe when NeMo-Run takes it.

    NeMo-Run never builds a task on the launch side: ``run.run(task, executor=...)`` and
    ``Experiment.add`` serialize it and take a ``clone()`` (``launch.nemo_run_internals``), dry run
    or not. Checking there makes a notebook's ``run.run`` refuse what ``dsv3 pretrain`` refuses:
    every recipe rule, the memory plan, and what any launch needs (``plan.check_launch``). The GPU
    node checks again when ``pretrain`` starts. A door that has run ``check_launch`` itself (``dsv3
    pretrain``) hands NeMo-Run ``checked(task)`` instead, so that the recipe is validated once.
    """

    def clone(self) -> PretrainTask:
        check_launch(built(self.recipe))
        return super().clone()


# NeMo-Run writes each job's task as YAML with representers registered per exact class: give this one
# run.Partial's (else the job directory gets no <name>_config.yaml).
yaml.SafeDumper.add_representer(PretrainTask, yaml.SafeDumper.yaml_representers[run.Partial])


def as_task(task: fdl.Partial) -> PretrainTask:
    """The NeMo-Run task of a factory's fiddle task: every config in it a ``run.Config`` (NeMo-Run's
    YAML represents its own classes only)."""
    return PretrainTask(task.__fn_or_cls__, **{k: as_nemo_run(v) for k, v in task.__arguments__.items()})


def as_nemo_run(value: object) -> object:
    """``value`` with each ``fdl.Config`` in it as a ``run.Config`` of the same arguments."""
    if isinstance(value, fdl.Config):
        return run.Config(value.__fn_or_cls__, **{k: as_nemo_run(v) for k, v in value.__arguments__.items()})
    if isinstance(value, list):
        return [as_nemo_run(v) for v in value]
    if isinstance(value, dict):
        return {k: as_nemo_run(v) for k, v in value.items()}
    return value


def checked(task: fdl.Partial) -> run.Partial:
    """The task as NeMo-Run takes it after the door ran ``check_launch``: a plain ``run.Partial`` of the
    same function and arguments, whose ``clone`` does not check again."""
    arguments = {k: as_nemo_run(v) for k, v in task.__arguments__.items()}
    return run.Partial(task.__fn_or_cls__, **arguments)
