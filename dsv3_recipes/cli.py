"""`dsv3`: list, show, plan and launch recipes (overrides are NeMo-Run CLI `key=value` arguments)."""

from __future__ import annotations

import argparse
import json
import sys

from dsv3_recipes.recipe import RecipeError


def _add_recipe_args(p: argparse.ArgumentParser, positional: bool = True) -> None:
    if positional:
        p.add_argument("name", help="recipe name (see `dsv3 list`)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.global_batch_size=16")
    p.add_argument(
        "--shrink",
        type=int,
        metavar="N",
        help="the same recipe at a size that runs on N GPUs of launch.gpu_type (only sizes change; "
        "substitutions are listed)",
    )


def _cmd_list(args: argparse.Namespace) -> int:
    from dsv3_recipes.recipes import RECIPES

    for name, factory in RECIPES.items():
        summary = (factory.__doc__ or "").strip().splitlines()[0]
        print(f"{name:26s} {summary}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from dsv3_recipes.launch import build_task, recipe_of, to_dict

    recipe = recipe_of(build_task(args.name, args.overrides, args.shrink))
    data = to_dict(recipe)
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    if recipe.shrink:
        from dsv3_recipes.shrink import summary

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


def _cmd_plan(args: argparse.Namespace) -> int:
    from dsv3_recipes.launch import build_task, recipe_of
    from dsv3_recipes.plan import plan

    report = plan(recipe_of(build_task(args.name, args.overrides, args.shrink)), mfu=args.mfu)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.render())
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from dsv3_recipes.launch import SlurmOptions, launch

    slurm = SlurmOptions.from_args_and_env(args)
    launch(
        args.factory,
        args.overrides,
        executor=args.executor,
        dryrun=args.dryrun,
        slurm=slurm,
        shrink_gpus=args.shrink,
    )
    return 0


def _cmd_mlperf_check(args: argparse.Namespace) -> int:
    from dsv3_recipes.mlperf_compliance import RULES, ProxyScale, check_log

    proxy = None
    if args.recipe:
        from dsv3_recipes.launch import build_task, recipe_of

        recipe = recipe_of(build_task(args.recipe, args.overrides))
        proxy = ProxyScale.of(recipe) if recipe.mlperf.proxy else None
    passed, messages = check_log(args.log, proxy)
    for message in messages:
        print(message, file=sys.stderr)
    rules = f"{RULES} + proxy overrides" if proxy else RULES
    print(f"{'PASSED' if passed else 'FAILED'}: {args.log} against mlperf-logging {rules}")
    return 0 if passed else 1


def _cmd_report(args: argparse.Namespace) -> int:
    from dsv3_recipes.report import report

    print(report(args.logdir, plot_png=not args.no_plot))
    return 0


def parser() -> argparse.ArgumentParser:
    from dsv3_recipes.launch import EXECUTORS, SlurmOptions

    top = argparse.ArgumentParser(prog="dsv3", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="all recipes").set_defaults(func=_cmd_list)

    p = sub.add_parser("show", help="the fully resolved recipe after overrides")
    _add_recipe_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("plan", help="preflight: parallel layout, memory per GPU, FLOPs, step time")
    _add_recipe_args(p)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--mfu", type=float, help="MFU for the step-time estimate (default: the measured proxy's, else 0.4)"
    )
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("pretrain", help="launch a recipe (or render its launch with --dryrun)")
    p.add_argument("--factory", "-f", required=True, help="recipe name (see `dsv3 list`)")
    p.add_argument("--executor", "-e", default="local", help=f"one of {', '.join(EXECUTORS)}")
    p.add_argument("--dryrun", action="store_true", help="print the rendered launch, run nothing")
    SlurmOptions.add_arguments(p)
    _add_recipe_args(p, positional=False)
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("mlperf-check", help="mlperf-logging's compliance check of an mllog file")
    p.add_argument("log", help="mllog file (or a job log that contains the :::MLLOG lines)")
    p.add_argument("--recipe", help="the recipe that wrote the log; a proxy recipe gets the proxy checks")
    _add_recipe_args(p, positional=False)
    p.set_defaults(func=_cmd_mlperf_check)

    p = sub.add_parser("report", help="table and plot of a run's per-step metrics")
    p.add_argument("logdir", help="a run's output dir (metrics.jsonl) or a directory of logs")
    p.add_argument("--no-plot", action="store_true")
    p.set_defaults(func=_cmd_report)

    from conversion.cli import add_arguments as add_convert_arguments
    from dsv3_recipes import preprocess, text_corpus

    preprocess.add_arguments(sub)
    text_corpus.add_arguments(sub)
    add_convert_arguments(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    top = parser()
    args, extra = top.parse_known_args(argv)
    # argparse ends a `nargs="*"` positional at the first option: `show NAME --json k=v` leaves `k=v` over.
    if extra and hasattr(args, "overrides") and not any(a.startswith("-") for a in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        top.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except (RecipeError, FileNotFoundError, ValueError) as e:
        print(f"dsv3: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
