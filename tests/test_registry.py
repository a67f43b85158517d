"""The recipe registry is the ``@registered`` marks: found from source, each name once, the same
functions NeMo-Run's factories call."""

import ast
import importlib

import pytest

from dsv3_recipes import recipes
from dsv3_recipes.recipe.schema import RecipeError


def test_every_marked_function_is_a_recipe_of_its_module():
    for name in recipes.names():
        module, function = recipes._where(name)
        fn = getattr(importlib.import_module(f"dsv3_recipes.recipes.{module}"), function)
        assert fn.recipe_name == name


def test_no_unmarked_factory_is_missed():
    """Every public function that returns a task and is named like a recipe carries the mark."""
    marked = {fn for _, fn in recipes._registry().values()}
    for module in {m for m, _ in recipes._registry().values()}:
        for node in recipes._source(module).body:
            public = isinstance(node, ast.FunctionDef) and not node.name.startswith("_")
            if public and node.name not in marked:
                returns = ast.unparse(node.returns) if node.returns else ""
                assert returns != "fdl.Partial" or node.args.args, f"{module}.{node.name} is unmarked"


def test_a_name_marked_twice_is_refused():
    one = ast.parse("@registered\ndef proxy_1gpu(): ...")
    two = ast.parse('@registered("proxy_1gpu")\ndef other(): ...')
    assert recipes.collect([("a", one)]) == {"proxy_1gpu": ("a", "proxy_1gpu")}
    with pytest.raises(RecipeError, match=r"^factory: recipe 'proxy_1gpu' registered twice: a and b$"):
        recipes.collect([("a", one), ("b", two)])


def test_a_named_mark_renames_and_other_decorators_do_not_register():
    source = '@registered("torchtitan_bf16")\ndef from_env(): ...\n@functools.cache\ndef helper(): ...'
    tree = ast.parse(source)
    assert recipes.collect([("torchtitan", tree)]) == {"torchtitan_bf16": ("torchtitan", "from_env")}


def test_the_registry_names_every_recipe_the_modules_define():
    assert len(recipes.names()) == len(set(recipes.names())) == 17
    assert recipes.names()[0] == "b200_bf16_256gpu"  # by module, in source order
