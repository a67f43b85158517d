"""A factory's fiddle task as NeMo-Run's: what ``run.run``, ``Experiment.add`` and NeMo-Run's YAML take.

Factories build ``fdl.Partial(pretrain, recipe=fdl.Config[Recipe])`` without NeMo-Run (its import takes
seconds); ``as_task`` makes the ``PretrainTask`` of it where a task is launched, exported or handed to a
notebook (``recipes.get``, ``recipes.proxy_1gpu()``, the NeMo-Run factory registry).
"""

from __future__ import annotations

import dataclasses
import typing

import fiddle as fdl
import nemo_run as run
import nemo_run.core.serialization.yaml  # noqa: F401  (registers run.Partial's YAML representer)
import yaml

from dsv3_recipes.launch.executors import check_size
from dsv3_recipes.launch.nemo_run_internals import adding_executor
from dsv3_recipes.plan.preflight import check_launch
from dsv3_recipes.plan.validate import RECIPE_TYPES, built, recipe_types
from dsv3_recipes.recipe.schema import RecipeError, describe_type, env_as_text, matches
from dsv3_recipes.train.entry import pretrain

PRETRAIN = f"{pretrain.__module__}.{pretrain.__qualname__}"


class PretrainTask(run.Partial):
    """``run.Partial(pretrain, recipe=run.Config[Recipe])`` that checks its recipe when NeMo-Run takes it.

    NeMo-Run never builds a task on the launch side: ``run.run(task, executor=...)`` and
    ``Experiment.add`` serialize it and take a ``clone()`` (``launch.nemo_run_internals``), dry run
    or not. Checking there makes a notebook's ``run.run`` refuse what ``dsv3 pretrain`` refuses:
    every recipe rule, the memory plan, what any launch needs (``plan.check_launch``) and the
    executor's size against the recipe's (``executors.check_size``). The GPU
    node checks again when ``pretrain`` starts. A door that has run ``check_launch`` itself (``dsv3
    pretrain``) hands NeMo-Run ``checked(task)`` instead, so that the recipe is validated once.
    """

    def clone(self) -> PretrainTask:
        recipe = built(self.recipe)
        check_launch(recipe)
        executor = adding_executor()
        if executor is not None:
            check_size(recipe, executor)
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


def load_yaml(text: str) -> PretrainTask:
    """A task from NeMo-Run YAML (``--to-yaml``), as safe as reading it: NeMo-Run's loader imports and
    fiddle calls whatever a ``_target_`` names, so every target is checked first (``pretrain`` at the
    top, recipe types below) and anything else refused in one line, before anything is imported."""
    try:
        data = yaml.safe_load(text)  # no python tags: plain data
    except yaml.YAMLError as e:
        raise RecipeError("task", f"not a YAML task: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict) or data.get("_target_") != PRETRAIN or data.get("_partial_") is not True:
        found = data.get("_target_") if isinstance(data, dict) else type(data).__name__
        raise RecipeError("_target_", f"{found!r}: a task file is a partial of {PRETRAIN}")
    allowed = recipe_types()
    _check_yaml_targets({k: v for k, v in data.items() if k not in ("_target_", "_partial_")}, "", allowed)
    from nemo_run.cli.config import ConfigSerializer

    try:
        loaded = ConfigSerializer().deserialize_yaml(text)
    except Exception as e:  # NeMo-Run's CLIException or fiddle's errors: whatever the check above missed
        raise RecipeError("task", " ".join(str(e).split())) from None
    return as_task(loaded)


def _check_yaml_targets(value: object, where: str, allowed: dict[str, type]) -> None:
    """Every mapping with a ``_target_`` names a recipe type, holds only its fields, and each plain
    value has its field's type (NeMo-Run's loader would say neither in one line)."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_yaml_targets(item, f"{where}[{i}]", allowed)
        return
    if not isinstance(value, dict):
        return
    target = value.get("_target_")
    if target is not None and target not in allowed:
        raise RecipeError(
            where or "_target_", f"{target!r} is not a recipe type; a task builds only {RECIPE_TYPES}"
        )
    hints = typing.get_type_hints(allowed[target]) if dataclasses.is_dataclass(allowed.get(target)) else {}
    for key, item in value.items():
        if key == "_target_":
            continue
        path = f"{where}.{key}" if where else str(key)
        if hints and key not in hints:
            raise RecipeError(path, f"unknown field of {target.rsplit('.', 1)[-1]}")
        if hints and not _has_target(item) and not _yaml_matches(item, hints[key]):
            raise RecipeError(
                path, f"expected {describe_type(hints[key])}, got {type(item).__name__} {item!r}"
            )
        _check_yaml_targets(item, path, allowed)


def _has_target(value: object) -> bool:
    if isinstance(value, dict):
        return "_target_" in value or any(map(_has_target, value.values()))
    return isinstance(value, list) and any(map(_has_target, value))


def _yaml_matches(value: object, tp: object) -> bool:
    """``value`` fits ``tp`` as the recipe reads YAML back: an int where a float is expected, and an
    env var's value written as a number (``env_as_text``, as ``Recipe.__post_init__`` reads it)."""
    if isinstance(value, dict) and typing.get_origin(tp) is dict:
        value = env_as_text(value)
    if isinstance(value, int) and not isinstance(value, bool) and float in (*typing.get_args(tp), tp):
        return True
    return matches(value, tp)
