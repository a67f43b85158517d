"""`dsv3`: list, show, plan and launch recipes (overrides are NeMo-Run CLI `key=value` arguments).

Building the parser and `dsv3 list` import neither NeMo-Run nor the recipes; `show`, `plan` and
`mlperf-check` build recipes with fiddle alone (NeMo-Run's own import takes seconds). NeMo-Run is
imported where a task is launched or exported (`pretrain`, `--to-yaml`, preprocess, convert).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from typing import TYPE_CHECKING

from dsv3_recipes.launch.options import JobFailed, LaunchOptions
from dsv3_recipes.recipe.schema import Recipe, RecipeError

if TYPE_CHECKING:
    import fiddle as fdl
    import nemo_run as run


def _add_recipe_args(p: argparse.ArgumentParser, positional: bool = True) -> None:
    """The recipe a command works on; every recipe-level option lives here, for show, plan and pretrain."""
    if positional:
        p.add_argument("name", help="recipe name (see `dsv3 list`)")
    else:
        p.add_argument("--factory", "-f", dest="name", required=True, help="recipe name (see `dsv3 list`)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.global_batch_size=16")
    p.add_argument(
        "--shrink",
        type=int,
        metavar="N",
        help="the same recipe at a size that runs on N GPUs of launch.gpu_type (only sizes change; "
        "substitutions are listed)",
    )
    p.add_argument(
        "--to-yaml",
        metavar="FILE",
        help="write the resolved task (recipe and overrides) as NeMo-Run YAML to FILE ('-': stdout) and stop",
    )


def _needs_nemo_run(args: argparse.Namespace) -> bool:
    """Whether the command launches or exports a task; the others build and check recipes with fiddle."""
    return args.command not in ("list", "report", "show", "plan", "mlperf-check") or bool(
        getattr(args, "to_yaml", None)
    )


def _recipe_task(args: argparse.Namespace) -> fdl.Partial:
    """The named recipe's task with the command line's recipe options applied: NeMo-Run's where it is
    launched or exported, else the factory's own fiddle task."""
    if not _needs_nemo_run(args):
        from dsv3_recipes import recipes

        return recipes.configured(args.name, args.overrides, args.shrink)
    from dsv3_recipes.launch.submit import recipe_task

    return recipe_task(args.name, args.overrides, args.shrink, getattr(args, "executor", "local"))


def _recipe_command(command):
    """Run ``command(args, task)`` on the recipe task, unless ``--to-yaml`` only exports it."""

    def run_command(args: argparse.Namespace) -> int:
        task = _recipe_task(args)
        if not args.to_yaml:
            return command(args, task)
        from nemo_run.cli.config import ConfigSerializer

        from dsv3_recipes.launch.submit import resolved_task, write_text

        text = ConfigSerializer().serialize_yaml(resolved_task(task))
        if args.to_yaml == "-":
            print(text, end="")
        else:
            write_text("--to-yaml", args.to_yaml, text)
            print(f"{args.name}: wrote the task to {args.to_yaml}", file=sys.stderr)
        return 0

    return run_command


def _cmd_list(args: argparse.Namespace) -> int:
    from dsv3_recipes import recipes

    for name in recipes.names():
        print(f"{name:26s} {recipes.summary(name)}")
    return 0


def _cmd_show(args: argparse.Namespace, task: fdl.Partial) -> int:
    import dataclasses

    from dsv3_recipes.plan.validate import build

    recipe = build(task.recipe)
    data = dataclasses.asdict(recipe)
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    if recipe.shrink:
        from dsv3_recipes.recipes.shrinking import summary

        print(summary(recipe.shrink) + "\n")
    print(_render_tree(data))
    return 0


def _render_tree(data: dict, indent: int = 0) -> str:
    lines = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            lines.append(" " * indent + f"{key}:")
            lines.append(_render_tree(value, indent + 2))
        else:
            lines.append(" " * indent + f"{key}: {value!r}")
    return "\n".join(lines)


def _cmd_plan(args: argparse.Namespace, task: fdl.Partial) -> int:
    from dsv3_recipes.plan.preflight import plan
    from dsv3_recipes.plan.validate import built

    report = plan(built(task.recipe))  # plan validates
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.render())
    return 0


def _cmd_pretrain(args: argparse.Namespace, task: run.Partial) -> int:
    from dsv3_recipes.launch.submit import launch

    launch(task, LaunchOptions.from_args(args))
    return 0


def _cmd_mlperf_check(args: argparse.Namespace) -> int:
    from dsv3_recipes.mlperf.compliance import RULES, ProxyScale, check_log

    proxy = None
    if args.recipe:
        from dsv3_recipes import recipes
        from dsv3_recipes.plan.validate import build

        recipe = build(recipes.configured(args.recipe, args.overrides).recipe)
        proxy = ProxyScale.of(recipe) if recipe.mlperf.proxy else None
    passed, messages = check_log(args.log, proxy)
    for message in messages:
        print(message, file=sys.stderr)
    rules = f"{RULES} + proxy overrides" if proxy else RULES
    print(f"{'PASSED' if passed else 'FAILED'}: {args.log} against mlperf-logging {rules}")
    return 0 if passed else 1


def _cmd_report(args: argparse.Namespace) -> int:
    from dsv3_recipes.report.logs import report

    print(report(args.logdir, plot_png=not args.no_plot))
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="dsv3", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="all recipes").set_defaults(func=_cmd_list)

    p = sub.add_parser("show", help="the fully resolved recipe after overrides")
    _add_recipe_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_recipe_command(_cmd_show))

    p = sub.add_parser("plan", help="preflight: parallel layout, memory per GPU, FLOPs, step time by part")
    _add_recipe_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_recipe_command(_cmd_plan))

    p = sub.add_parser("pretrain", help="launch a recipe (or render its launch with --dryrun)")
    _add_recipe_args(p, positional=False)
    LaunchOptions.add_arguments(p)
    p.set_defaults(func=_recipe_command(_cmd_pretrain))

    p = sub.add_parser("mlperf-check", help="mlperf-logging's compliance check of an mllog file")
    p.add_argument("log", help="mllog file (or a job log that contains the :::MLLOG lines)")
    p.add_argument("--recipe", help="the recipe that wrote the log; a proxy recipe gets the proxy checks")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="the overrides the run was given")
    p.set_defaults(func=_cmd_mlperf_check)

    p = sub.add_parser("report", help="table and plot of a run's per-step metrics")
    p.add_argument("logdir", help="a run's output dir (metrics.jsonl) or a directory of logs")
    p.add_argument("--no-plot", action="store_true")
    p.set_defaults(func=_cmd_report)

    from conversion.cli import add_arguments as add_convert_arguments
    from dsv3_recipes.data import preprocess, text_corpus

    preprocess.add_arguments(sub)
    text_corpus.add_arguments(sub)
    add_convert_arguments(sub)
    return top


def recipe_of_command(command: str) -> Recipe:
    """The recipe a ``dsv3 show/plan/pretrain ...`` command line runs, on this machine's capabilities
    (how a committed result's command is read back)."""
    from dsv3_recipes import recipes
    from dsv3_recipes.plan.validate import build
    from dsv3_recipes.recipe.rules import Capabilities

    args = parser().parse_args(shlex.split(command)[1:])
    return build(recipes.configured(args.name, args.overrides, args.shrink, Capabilities.here()).recipe)


def import_nemo_run_without_torch() -> None:
    """Import NeMo-Run as on a login node, where torch is absent.

    NeMo-Run imports torch when it is installed (a venv with the train extra) only to register a YAML
    representer for ``torch.dtype``, which no recipe holds; that is about 40% of NeMo-Run's import
    (``python -X importtime -c 'import nemo_run'``). A ``None`` in ``sys.modules`` makes that one
    import fail as if torch were not installed; it is removed again, so torch stays importable.
    """
    if "nemo_run" in sys.modules or "torch" in sys.modules:
        return
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        import nemo_run  # noqa: F401
    finally:
        del sys.modules["torch"]


def main(argv: list[str] | None = None) -> int:
    top = parser()
    args, extra = top.parse_known_args(argv)
    # argparse ends a `nargs="*"` positional at the first option: `show NAME --json k=v` leaves `k=v` over.
    if extra and hasattr(args, "overrides") and not any(a.startswith("-") for a in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        top.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if _needs_nemo_run(args):
            import_nemo_run_without_torch()
        rc = args.func(args)
        sys.stdout.flush()  # here, so that a reader that stopped early (`| head`) is caught below
        return rc
    except BrokenPipeError:  # the reader closed the pipe: stop quietly, as head's other writers do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 128 + signal.SIGPIPE
    except (RecipeError, FileNotFoundError, ValueError) as e:
        print(f"dsv3: error: {e}", file=sys.stderr)
        return 2
    except JobFailed as e:
        print(f"dsv3: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
