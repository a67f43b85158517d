"""``nemo dsv3 pretrain --factory NAME recipe.k=v``: NeMo-Run's own CLI over the recipes.

NeMo-Run finds an entrypoint's factories under the entrypoint's function, so every recipe is registered
under ``pretrain`` here as well as in the ``dsv3`` namespace. This function is the CLI's handle only:
the factories make the train entry's task (``train.entry.pretrain``), which NeMo-Run launches. Not
registered under the train entry itself: NeMo-Run's parser would then read a string value equal to a
recipe's name (a recipe's ``name`` is its factory's) as that recipe's task.

``CheckedRunContext`` gives it ``dsv3 pretrain``'s validation, once, as that door does: ``--factory``
must name a recipe; the task NeMo-Run parsed (factory, then overrides) is checked, with the size of the
executor NeMo-Run parsed (``executors.check_size``), before anything is shown, exported, rendered or
submitted, and handed on as ``checked(task)``, whose clone does not check again. A refusal is one
line, exit 2."""

from __future__ import annotations

import sys

import nemo_run as run

from dsv3_recipes import recipes
from dsv3_recipes.launch.executors import check_size
from dsv3_recipes.plan.preflight import check_launch
from dsv3_recipes.plan.validate import built
from dsv3_recipes.recipe.schema import Recipe, RecipeError
from dsv3_recipes.recipes.task import checked
from dsv3_recipes.train import entry


class CheckedRunContext(run.cli.RunContext):
    def parse_fn(self, fn, args, **default_kwargs):
        # A recipe's name only: NeMo-Run would import and call any dotted path given as a factory.
        if self.factory not in recipes.names():
            raise RecipeError(
                "--factory", f"{self.factory!r} is not a recipe; allowed: {', '.join(recipes.names())}"
            )
        task = super().parse_fn(fn, args, **default_kwargs)
        recipe = built(task.recipe)
        check_launch(recipe)
        if self.executor is not None:  # NeMo-Run built it (parse_args) before it parses the task
            check_size(recipe, self.executor)
        return checked(task)  # checked once here: NeMo-Run's run.run then takes it as it is

    def cli_execute(self, fn, args, entrypoint_type="task"):
        try:
            return super().cli_execute(fn, args, entrypoint_type)
        except RecipeError as refused:
            print(f"pretrain: {refused}", file=sys.stderr)
            raise SystemExit(2) from None


@run.cli.entrypoint(
    namespace="dsv3",
    name="pretrain",
    type="task",
    help="Pretrain a recipe: --factory NAME recipe.FIELD=VALUE ...",
    run_ctx_cls=CheckedRunContext,
)
def pretrain(recipe: Recipe) -> None:
    entry.pretrain(recipe)
