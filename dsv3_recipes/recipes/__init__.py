"""Recipe factories by name. Each builds ``fdl.Partial(pretrain, recipe=fdl.Config[Recipe])`` with fiddle
alone; ``get(name)`` (and ``recipes.<factory>()``) returns NeMo-Run's task of it, a ``run.Partial``.

A variant calls its parent and overrides fields; ``task.recipe`` is the recipe to edit. Every factory is
registered with NeMo-Run (``run.cli.factory``) in the ``dsv3`` namespace, so NeMo-Run's tooling and
notebooks find them: ``run.cli.list_factories("dsv3")``, ``run.cli.resolve_factory("dsv3",
"proxy_1gpu")()``; NeMo-Run loads them through the ``nemo_run.cli`` entry point in pyproject.toml. Not
under ``target=pretrain``: NeMo-Run's parser then reads any string value under ``pretrain`` that equals a
factory's name as that factory's task, and a recipe's ``name`` is its factory's.

A factory is a function of a module here marked ``@registered`` (``recipes.common``); that mark is the
registry. The recipe modules load on first use: ``names()`` and ``summary()`` find the marks and
docstrings in the modules' source, and ``dsv3 list`` imports nothing; ``fiddle_task`` imports fiddle,
and only ``factory``/``get`` NeMo-Run.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from typing import TYPE_CHECKING

from dsv3_recipes.recipe.schema import RecipeError

if TYPE_CHECKING:
    import fiddle as fdl
    import nemo_run as run

    from dsv3_recipes.recipe.rules import Capabilities


@functools.cache
def _source(module: str) -> ast.Module:
    return ast.parse((resources.files(__package__) / f"{module}.py").read_text())


def _mark(decorator: ast.expr) -> str | None:
    """The name a ``@registered`` / ``@registered("name")`` decorator gives, '' for the function's own."""
    if isinstance(decorator, ast.Name) and decorator.id == "registered":
        return ""
    if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", None) == "registered":
        [arg] = decorator.args
        return arg.value
    return None


@functools.cache
def _registry() -> dict[str, tuple[str, str]]:
    """Recipe name -> (module, function) for this package (read as source, so ``dsv3 list`` imports no
    recipe); by module, in source order."""
    modules = sorted(f.name[:-3] for f in resources.files(__package__).iterdir() if f.name.endswith(".py"))
    return collect((module, _source(module)) for module in modules)


def collect(sources: Iterable[tuple[str, ast.Module]]) -> dict[str, tuple[str, str]]:
    """The ``@registered`` factories of (module, parsed source) pairs; a name marked twice is refused."""
    found: dict[str, tuple[str, str]] = {}
    for module, tree in sources:
        for node in tree.body:
            marks = [_mark(d) for d in node.decorator_list] if isinstance(node, ast.FunctionDef) else []
            for name in (mark or node.name for mark in marks if mark is not None):
                if name in found:
                    twice = f"recipe {name!r} registered twice: {found[name][0]} and {module}"
                    raise RecipeError("factory", twice)
                found[name] = (module, node.name)
    return found


def names() -> list[str]:
    return list(_registry())


def _where(name: str) -> tuple[str, str]:
    try:
        return _registry()[name]
    except KeyError:
        raise RecipeError("factory", f"unknown recipe {name!r}; allowed: {', '.join(_registry())}") from None


def summary(name: str) -> str:
    """The first line of the factory's docstring, read from its source without importing it."""
    module, function = _where(name)
    node = next(n for n in _source(module).body if isinstance(n, ast.FunctionDef) and n.name == function)
    return (ast.get_docstring(node) or "").splitlines()[0]


NAMESPACE = "dsv3"


def fiddle_task(name: str, gpu_type: str | None = None) -> fdl.Partial:
    """The named factory's task in fiddle alone (``dsv3 show``/``plan`` import no NeMo-Run); an unknown
    name fails with the list of known ones.

    ``gpu_type`` reaches factories whose defaults depend on the GPU (they take a ``gpu_type``
    argument, e.g. proxy_1gpu); the other recipes are made for the GPU their source names.
    """
    make = _function(name)
    if gpu_type is not None and "gpu_type" in inspect.signature(make).parameters:
        return make(gpu_type=gpu_type)
    return make()


def configured(
    name: str,
    overrides: Sequence[str] = (),
    shrink_gpus: int | None = None,
    capabilities: Capabilities | None = None,
) -> fdl.Partial:
    """The named recipe's fiddle task with ``key=value`` overrides applied to its recipe
    (``recipes.overrides``), then shrunk to ``shrink_gpus`` GPUs if given (fields the overrides set
    stay as set)."""
    from dsv3_recipes.recipe import hardware
    from dsv3_recipes.recipes import overrides as cli_overrides

    # GPU-dependent defaults follow launch.gpu_type, the last one given as for every override (the field
    # takes the last); an unknown one is refused by the override below.
    gpu_type = next(
        (a.split("=", 1)[1].strip("'\"") for a in reversed(overrides) if a.startswith("launch.gpu_type=")),
        None,
    )
    task = fiddle_task(name, gpu_type if gpu_type in hardware.GPUS else None)
    keys = cli_overrides.apply(task.recipe, overrides)
    if shrink_gpus is not None:
        from dsv3_recipes.recipes.shrinking import shrink

        task = shrink(task, gpus=shrink_gpus, capabilities=capabilities, keep=keys)
    return task


def _function(name: str) -> Callable[..., fdl.Partial]:
    module, function = _where(name)
    return getattr(importlib.import_module(f"{__package__}.{module}"), function)


@functools.cache
def factory(name: str) -> Callable[..., run.Partial]:
    """The named factory as NeMo-Run's (its task a ``PretrainTask``), registered in the ``dsv3`` namespace."""
    import nemo_run as run

    from dsv3_recipes.recipes.task import as_task
    from dsv3_recipes.train.entry import pretrain

    fn = _function(name)

    @functools.wraps(fn)
    def make(*args, **kwargs) -> run.Partial:
        return as_task(fn(*args, **kwargs))

    make.__signature__ = inspect.signature(fn).replace(return_annotation="run.Partial")  # type: ignore[attr-defined]

    from dsv3_recipes.launch import nemo_cli

    # target: the task the factory makes (NeMo-Run skips its return-annotation check); namespace wins.
    # Under nemo_cli.pretrain too, where `nemo dsv3 pretrain --factory NAME` looks for it.
    run.cli.factory(make, target=nemo_cli.pretrain, name=name)
    return run.cli.factory(make, target=pretrain, namespace=NAMESPACE, name=name)


def get(name: str, gpu_type: str | None = None) -> run.Partial:
    """The named recipe's NeMo-Run task (``run.run(task, executor=...)``; overrides go to
    ``task.recipe``); ``gpu_type`` as for ``fiddle_task``."""
    make = factory(name)
    if gpu_type is not None and "gpu_type" in inspect.signature(make).parameters:
        return make(gpu_type=gpu_type)
    return make()


def __getattr__(attr: str) -> object:
    """``RECIPES`` (name -> factory, all registered), ``shrink``, a factory by its function name (NeMo-Run's,
    for notebooks: ``recipes.proxy_1gpu()``), or a module of this package."""
    if attr == "shrink":
        from dsv3_recipes.recipes.shrinking import shrink

        return shrink
    if attr == "RECIPES":
        return {name: factory(name) for name in _registry()}
    if (resources.files(__package__) / f"{attr}.py").is_file():
        return importlib.import_module(f"{__package__}.{attr}")
    for name, (_, function) in _registry().items():
        if function == attr:
            return factory(name)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
