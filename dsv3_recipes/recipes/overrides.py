"""``key=value`` overrides of a recipe, in fiddle alone: `dsv3 show` and `dsv3 plan` import no NeMo-Run.

The syntax and the parsing are NeMo-Run's CLI's (``nemo_run.cli.cli_parser``: ``key=value`` and the
operators ``+= -= *= /= |= &=``, a value read by its field's annotation: ints, floats, ``true``/``false``
and the like, quoted or bare strings, Python literals for lists and dicts, ``None``/``null`` for an
Optional); tests/test_overrides.py checks every annotation of the recipe against NeMo-Run's own parser.
``env_vars`` merges instead of replacing (README, Python).
"""

from __future__ import annotations

import ast
import dataclasses
import operator
import re
import typing
from collections.abc import Sequence
from typing import Literal

import fiddle as fdl

from dsv3_recipes.recipe.schema import Recipe, RecipeError, describe_type

ASSIGNMENT = re.compile(r"^([\w\[\]\.]+)\s*(=|\+=|-=|\*=|/=|\|=|&=)\s*(.+)$")  # NeMo-Run's PythonicParser
OPERATIONS = {
    "=": lambda old, new: new,
    "+=": operator.iadd,
    "-=": operator.isub,
    "*=": operator.imul,
    "/=": operator.itruediv,
    "|=": lambda old, new: (
        {**old, **new} if isinstance(old, dict) and isinstance(new, dict) else operator.ior(old, new)
    ),
    "&=": operator.iand,
}
TRUE, FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")
NONE = ("none", "null")


class _Unparsable(ValueError):
    """The value does not read as the annotation."""


def parse(value: str, annotation: object) -> object:
    """``value`` read as ``annotation``, as NeMo-Run's ``TypeParser`` reads it; raises ``_Unparsable``."""
    value = value.strip('"')
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is int or annotation is float:
        try:
            return annotation(value)  # type: ignore[operator]
        except ValueError:
            raise _Unparsable(value) from None
    if annotation is str:
        quoted = len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""
        return value[1:-1] if quoted else value
    if annotation is bool:
        if value.lower() in TRUE:
            return True
        if value.lower() in FALSE:
            return False
        raise _Unparsable(value)
    if origin is Literal:
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if value in args:
            return value
        raise _Unparsable(value)
    if origin in (list, dict):
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise _Unparsable(value) from None
        if not isinstance(parsed, origin):
            raise _Unparsable(value)
        if origin is list:
            return [parse(str(item), args[0]) for item in parsed]
        return {parse(str(k), args[0]): parse(str(v), args[1]) for k, v in parsed.items()}  # type: ignore[union-attr]
    if origin is typing.Union:
        if type(None) in args and value.lower() in NONE:
            return None
        for arg in args:
            if arg is not type(None):
                try:
                    return parse(value, arg)
                except _Unparsable:
                    pass
        raise _Unparsable(value)
    raise _Unparsable(value)  # NeMo-Run's strict mode: an annotation it has no parser for


def field_annotation(key: str) -> object:
    """The annotation of a dotted recipe field; unknown names fail with the allowed ones."""
    cls: object = Recipe
    annotation: object = Recipe
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            raise RecipeError(".".join(parts[:i]), f"{describe_type(annotation)} has no fields")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        if part not in names:
            where = ".".join(parts[:i]) or "recipe"
            raise RecipeError(key, f"unknown field of {where}; allowed: {', '.join(names)}")
        annotation = cls = hints[part]
    return annotation


def apply(recipe: fdl.Config[Recipe], overrides: Sequence[str]) -> list[str]:
    """Apply ``key=value`` overrides to a recipe config; returns the keys they set.

    ``env_vars={...}`` merges into the recipe's variables (NeMo-Run's ``env_vars|={...}``) instead of
    replacing them; a ``None`` value removes that variable (``env_vars={'NCCL_DEBUG': None}``);
    ``env_vars.NAME=text`` sets one.
    """
    keys = []
    for arg in overrides:
        if "=" not in arg:
            raise RecipeError(arg, "overrides are key=value (e.g. train.global_batch_size=16)")
        target, value = arg.split("=", 1)
        key = target.rstrip("+-*/|&")  # without NeMo-Run's operator (key+=, key|=, ...)
        keys.append(key)
        if target == "env_vars":
            _merge_env_vars(recipe, _env_vars_literal(value))
            continue
        if target == key and key.startswith("env_vars."):  # one variable, its text verbatim
            _merge_env_vars(recipe, {key.removeprefix("env_vars."): value})
            continue
        annotation = field_annotation(key)
        try:
            _assign(recipe, arg, annotation)
        except (_Unparsable, AttributeError, TypeError, ValueError, ArithmeticError):
            raise RecipeError(key, f"expected {describe_type(annotation)}, got {value!r}") from None
    return keys


def _assign(recipe: fdl.Config[Recipe], arg: str, annotation: object) -> None:
    match = ASSIGNMENT.match(arg)
    if match is None:
        raise _Unparsable(arg)
    key, op, text = match.groups()
    *path, name = key.split(".")
    section = recipe
    for part in path:
        section = getattr(section, part)
    value = parse(text, annotation)
    setattr(section, name, value if op == "=" else OPERATIONS[op](getattr(section, name), value))


def _env_vars_literal(value: str) -> dict:
    try:
        changes = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        changes = None
    if not isinstance(changes, dict) or not all(isinstance(k, str) for k in changes):
        raise RecipeError("env_vars", f"expected a dict of name -> str (None removes a name), got {value!r}")
    return changes


def _merge_env_vars(recipe: fdl.Config[Recipe], changes: dict) -> None:
    merged = {**recipe.env_vars, **changes}
    recipe.env_vars = {k: v for k, v in merged.items() if v is not None}
