"""``nemo dsv3 pretrain --factory NAME recipe.k=v``: NeMo-Run's own CLI over the recipes.

NeMo-Run finds an entrypoint's factories under the entrypoint's function, so every recipe is registered
under ``pretrain`` here as well as in the ``dsv3`` namespace. This function is the CLI's handle only:
the factories make the train entry's task (``train.entry.pretrain``), which NeMo-Run launches. Not
registered under the train entry itself: NeMo-Run's parser would then read a string value equal to a
recipe's name (a recipe's ``name`` is its factory's) as that recipe's task.

``CheckedRunContext`` gives it ``dsv3 pretrain``'s validation, once, as that door does: ``--factory``
must name a recipe; the task NeMo-Run parsed (factory, then overrides) is checked before anything is
shown, exported or run, and handed on as ``checked(task)``, whose clone does not check again. A refusal
is one line, exit 2.

``run.executor=slurm run.executor.FIELD=VALUE ...`` (NeMo-Run's executor syntax) submits the task as
``dsv3 pretrain -e slurm`` does (``submit.launch``, which checks it): the factory ``slurm`` gives that
command's Slurm options (``SlurmOptions``: its defaults and environment), which NeMo-Run sets field by
field. NeMo-Run builds an executor before it parses the task; this one is made from those options and
the recipe (``executors.for_recipe``: its size, mounts, env and image), so the checks, the job name
(``<recipe>-<id6>``), the dry run (the sbatch script) and a failed job (exit 1) are that command's.
Without ``run.executor`` NeMo-Run runs the task in this process.
"""

from __future__ import annotations

import dataclasses
import sys

import nemo_run as run
from nemo_run.cli.cli_parser import CLIException, parse_cli_args

from dsv3_recipes import recipes
from dsv3_recipes.launch import safe, submit
from dsv3_recipes.launch.options import JobFailed, LaunchOptions, SlurmOptions, SubmitRefused
from dsv3_recipes.plan.preflight import check_launch
from dsv3_recipes.plan.validate import built
from dsv3_recipes.recipe.schema import Recipe, RecipeError, describe_type
from dsv3_recipes.recipes.task import checked
from dsv3_recipes.train import entry

EXECUTORS = ("slurm",)  # the factories registered below


@dataclasses.dataclass
class ExecutorOptions(SlurmOptions):
    """``dsv3 pretrain``'s Slurm options as NeMo-Run's CLI sets them, named so in a refusal."""

    @staticmethod
    def flag(option: str) -> str:
        return f"run.executor.{option}"


class CheckedRunContext(run.cli.RunContext):
    def parse_executor(self, name, *args):
        # A registered name only: NeMo-Run would import and call any dotted path given as an executor.
        if name not in EXECUTORS:
            raise RecipeError("run.executor", f"{name!r} is not an executor; allowed: {', '.join(EXECUTORS)}")
        options = super().parse_executor(name)
        types = {f.name: f.type for f in dataclasses.fields(ExecutorOptions)}
        for arg in args:  # one at a time, so that a refusal names its field, in one line
            field, _, value = arg.partition("=")
            if field not in types:
                raise RecipeError(f"run.executor.{field}", f"no such option; allowed: {', '.join(types)}")
            safe.cli_value(f"run.executor.{field}", value)
            try:
                parse_cli_args(options, [arg])
            except CLIException:
                raise RecipeError(
                    f"run.executor.{field}", f"{value!r} is not {describe_type(types[field])}"
                ) from None
        return options

    def parse_plugin(self, name, *args):
        # As for an executor: NeMo-Run would call a dotted path; and no launch here takes plugins.
        raise RecipeError("run.plugins", f"{name!r}: nemo dsv3 pretrain takes no NeMo-Run plugins")

    def parse_fn(self, fn, args, **default_kwargs):
        task = self._recipe_task(fn, args, **default_kwargs)
        check_launch(built(task.recipe))
        return checked(task)  # checked once here: NeMo-Run's run.run then takes it as it is

    def _recipe_task(self, fn, args, **default_kwargs):
        # A recipe's name only: NeMo-Run would import and call any dotted path given as a factory.
        if self.yaml:  # NeMo-Run's loader imports every _target_ the file names, before any check here
            raise RecipeError("--yaml", "nemo dsv3 pretrain reads no YAML; give recipe.FIELD=VALUE overrides")
        if self.factory not in recipes.names():
            raise RecipeError(
                "--factory", f"{self.factory!r} is not a recipe; allowed: {', '.join(recipes.names())}"
            )
        overrides = []
        for arg in args:  # NeMo-Run's parser would run a value that is code: only literals reach it
            field, _, value = arg.partition("=")
            safe.cli_value(field.strip(), value)
            if field.startswith("recipe."):
                overrides.append(arg.removeprefix("recipe."))
            elif field.split(".")[0] in ("executor", "plugins"):
                raise RecipeError(field, f"NeMo-Run's syntax is run.{field} (run.executor=slurm)")
            elif not field.startswith("run."):
                raise RecipeError(
                    field, "an override here is recipe.FIELD=VALUE (e.g. recipe.train.train_iters=20)"
                )
        # Each value read as `dsv3 pretrain` reads it (its field's type, a refusal naming the field in one
        # line), before NeMo-Run's parser, whose errors are many lines.
        recipes.configured(self.factory, overrides)
        return super().parse_fn(fn, args, **default_kwargs)

    def _execute_task(self, fn, task_args):
        # NeMo-Run's run step (nemo_run_internals); an export (--to-yaml...) stays NeMo-Run's.
        if not isinstance(self.executor, ExecutorOptions) or self.to_yaml or self.to_toml or self.to_json:
            return super()._execute_task(fn, task_args)
        options = LaunchOptions(
            executor="slurm",
            dryrun=self.dryrun,
            detach=self.detach,
            yes=self.skip_confirmation,
            slurm=self.executor,
        )
        submit.launch(self._recipe_task(fn, task_args), options)

    def cli_execute(self, fn, args, entrypoint_type="task"):
        try:
            return super().cli_execute(fn, args, entrypoint_type)
        except (RecipeError, SubmitRefused) as refused:
            print(f"pretrain: {refused}", file=sys.stderr)
            raise SystemExit(2) from None
        except JobFailed as failed:
            print(f"pretrain: {failed}", file=sys.stderr)
            raise SystemExit(1) from None


@run.cli.factory(target=CheckedRunContext, target_arg="executor", name="slurm")
def slurm() -> run.Config[ExecutorOptions]:
    """``run.executor=slurm``: ``dsv3 pretrain -e slurm``'s options, from its defaults and environment
    (``$SBATCH_ACCOUNT``, ``$RUN_CONF_IMAGE``...); ``run.executor.account=...`` sets each."""
    return run.Config(ExecutorOptions, **dataclasses.asdict(ExecutorOptions.from_env()))


@run.cli.entrypoint(
    namespace="dsv3",
    name="pretrain",
    type="task",
    help="Pretrain a recipe: --factory NAME recipe.FIELD=VALUE ...",
    run_ctx_cls=CheckedRunContext,
)
def pretrain(recipe: Recipe) -> None:
    entry.pretrain(recipe)
