"""`key=value` overrides without NeMo-Run (recipes.overrides) read every recipe field as NeMo-Run's own
CLI parser does: the same value, or a refusal where NeMo-Run refuses."""

import dataclasses
import typing

import fiddle as fdl
import pytest
from nemo_run.cli.cli_parser import CLIException, parse_cli_args, parse_value

from dsv3_recipes import recipes
from dsv3_recipes.recipe.schema import Recipe, RecipeError
from dsv3_recipes.recipes import overrides

VALUES = [
    "1", "0", "-3", "16", "1_000", "1.5", "1e-3", "inf", "true", "False", "yes", "off", "None", "null",
    "abc", "'abc'", '"abc"', "", "h200", "alltoall", "'flex'", "selective", "fp32", "[]", "['a', 'b']",
    '["x"]', "[1, 2]", "{}", "{'A': '1'}", "{'A': 1}", "/data/c4_text_document",
]  # fmt: skip


def _annotations(cls=Recipe, seen=None) -> set:
    seen = set() if seen is None else seen
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            _annotations(tp, seen)
        elif typing.get_origin(tp) is not typing.Union or not any(
            map(dataclasses.is_dataclass, typing.get_args(tp))
        ):
            seen.add(tp)
    return seen


def _nemo_run(value, annotation):
    try:
        return ("ok", parse_value(value, annotation))
    except CLIException:
        return ("refused", None)


def _ours(value, annotation):
    try:
        return ("ok", overrides.parse(value, annotation))
    except ValueError:
        return ("refused", None)


@pytest.mark.parametrize("annotation", sorted(_annotations(), key=str), ids=str)
def test_every_field_type_reads_as_nemo_run_reads_it(annotation):
    for value in VALUES:
        assert _ours(value, annotation) == _nemo_run(value, annotation), (value, annotation)


@pytest.mark.parametrize(
    "arg",
    ["train.train_iters*=2", "train.global_batch_size+=8", "optimizer.lr/=2", "model.mtp_num_layers=None",
     "env_vars|={'X': '1'}", "model.recompute_modules=['moe_act']", "dataset.mock=true"],
)  # fmt: skip
def test_operators_apply_as_nemo_run_applies_them(arg):
    ours, theirs = recipes.fiddle_task("proxy_1gpu").recipe, recipes.get("proxy_1gpu").recipe
    overrides.apply(ours, [arg])
    parse_cli_args(theirs, [arg])
    assert dataclasses.asdict(fdl.build(ours)) == dataclasses.asdict(fdl.build(theirs))


def test_a_value_its_field_cannot_hold_names_the_field():
    with pytest.raises(RecipeError, match=r"^train.global_batch_size: expected int, got 'abc'$"):
        overrides.apply(recipes.fiddle_task("proxy_1gpu").recipe, ["train.global_batch_size=abc"])
