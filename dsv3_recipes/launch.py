"""Launch side: recipe + overrides -> checked task -> executor -> run (or a rendered dry run).

Every check here runs on the login node before anything is submitted: a bad override, an impossible
layout, a missing dataset or an absent GPU fails in seconds with the field it concerns.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import logging
import os
import shlex
import shutil
import subprocess
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import nemo_run as run
from nemo_run.cli.cli_parser import CLIException, parse_cli_args

from dsv3_recipes import executors, hardware, mlperf_rules, recipes, validate
from dsv3_recipes.recipe import Recipe, RecipeError, blend_prefixes, describe_type
from dsv3_recipes.shrink import Capabilities

EXECUTORS = executors.EXECUTORS


def build_task(
    name: str,
    overrides: Sequence[str] = (),
    shrink_gpus: int | None = None,
    capabilities: Capabilities | None = None,
) -> run.Partial:
    """The named recipe's task with ``key=value`` overrides applied to its recipe, then shrunk to
    ``shrink_gpus`` GPUs if given (fields the overrides set stay as set).

    ``env_vars={...}`` merges into the recipe's variables (NeMo-Run's ``env_vars|={...}``) instead of
    replacing them; a ``None`` value removes that variable (``env_vars={'NCCL_DEBUG': None}``).
    """
    # GPU-dependent defaults follow launch.gpu_type; an unknown one is refused by the override below.
    gpu_type = next(
        (a.split("=", 1)[1].strip("'\"") for a in overrides if a.startswith("launch.gpu_type=")), None
    )
    task = recipes.get(name, gpu_type if gpu_type in hardware.GPUS else None)
    logging.getLogger("nemo_run.cli.cli_parser").setLevel(logging.CRITICAL)  # we report errors ourselves
    keys = []
    for arg in overrides:
        if "=" not in arg:
            raise RecipeError(arg, "overrides are key=value (e.g. train.global_batch_size=16)")
        key, value = arg.split("=", 1)
        key = key.rstrip("+-*/|&")
        keys.append(key)
        if key == "env_vars" and arg.startswith("env_vars="):
            _merge_env_vars(task, value)
            continue
        annotation = field_annotation(key)
        try:
            parse_cli_args(task.recipe, [arg])
        except CLIException:
            raise RecipeError(key, f"expected {describe_type(annotation)}, got {value!r}") from None
    if shrink_gpus is not None:
        task = recipes.shrink(task, gpus=shrink_gpus, capabilities=capabilities, keep=keys)
    return task


def _merge_env_vars(task: run.Partial, value: str) -> None:
    try:
        changes = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        changes = None
    if not isinstance(changes, dict) or not all(isinstance(k, str) for k in changes):
        raise RecipeError("env_vars", f"expected a dict of name -> str (None removes a name), got {value!r}")
    merged = {**task.recipe.env_vars, **changes}
    task.recipe.env_vars = {k: v for k, v in merged.items() if v is not None}


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


def recipe_of(task: run.Partial) -> Recipe:
    """Build the recipe dataclass and validate it (``validate.build``)."""
    return validate.build(task.recipe)


def to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


@dataclass
class SlurmOptions:
    """Slurm job options: flags first, then [titan-dsv3]'s environment (SBATCH_*, RUN_CONF_*)."""

    account: str | None = None
    partition: str | None = None
    time: str = "04:00:00"
    container_image: str | None = None
    container_mounts: list[str] = field(default_factory=list)
    job_dir: str = ""
    ssh_host: str | None = None
    ssh_user: str | None = None
    bindpcie: str | None = None
    additional_parameters: dict[str, object] = field(default_factory=dict)

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("slurm executor")
        g.add_argument("--account", help="Slurm account (default: $SBATCH_ACCOUNT)")
        g.add_argument("--partition", help="Slurm partition (default: $SBATCH_PARTITION)")
        g.add_argument("--time", default="04:00:00")
        g.add_argument("--container-image", help="default: $RUN_CONF_IMAGE, else the recipe GPU's image")
        g.add_argument("--container-mounts", help="comma-separated src:dst (default: $RUN_CONF_MOUNTS)")
        g.add_argument("--job-dir", default="", help="where NeMo-Run keeps the job's files on the cluster")
        g.add_argument("--ssh-host", help="submit over SSH (default: sbatch on this machine)")
        g.add_argument("--ssh-user")
        g.add_argument(
            "--bindpcie",
            help="path of bindpcie in the container (default: the image's /usr/local/bin/bindpcie)",
        )

    @classmethod
    def from_args_and_env(
        cls, args: argparse.Namespace, env: Mapping[str, str] | None = None
    ) -> SlurmOptions:
        env = os.environ if env is None else env
        mounts = args.container_mounts or env.get("RUN_CONF_MOUNTS", "")
        return cls(
            account=args.account or env.get("SBATCH_ACCOUNT"),
            partition=args.partition or env.get("SBATCH_PARTITION"),
            time=args.time,
            container_image=args.container_image or env.get("RUN_CONF_IMAGE"),
            container_mounts=[m for m in mounts.split(",") if m],
            job_dir=args.job_dir,
            ssh_host=args.ssh_host,
            ssh_user=args.ssh_user,
            bindpcie=args.bindpcie,
            additional_parameters=parse_additional_slurm_params(env.get("ADDITIONAL_SLURM_PARAMS", "")),
        )


def parse_additional_slurm_params(text: str) -> dict[str, object]:
    """[titan-dsv3]'s ADDITIONAL_SLURM_PARAMS: ``key=value`` pairs and bare flags separated by ``;``."""
    params: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        key, sep, value = item.partition("=")
        params[key] = value if sep else True
    return params


def make_executor(kind: str, recipe: Recipe, slurm: SlurmOptions | None) -> run.Executor:
    if kind != "slurm":
        return executors.for_recipe(kind, recipe)
    from dsv3_recipes.images import image_for

    slurm = slurm or SlurmOptions()
    if not slurm.account:
        raise RecipeError("executor.account", "Slurm needs an account: --account or $SBATCH_ACCOUNT")
    image = slurm.container_image or image_for(recipe.launch.gpu_type)
    if "/" not in image.split(":")[0]:
        raise RecipeError(
            "executor.container_image",
            f"{image} is a local tag the nodes cannot pull: push it (docker/README.md) and set "
            "$DSV3_IMAGE_REGISTRY, or pass --container-image",
        )
    return executors.for_recipe(
        "slurm",
        recipe,
        account=slurm.account,
        partition=slurm.partition,
        time=slurm.time,
        container_image=image,
        container_mounts=slurm.container_mounts,
        job_dir=slurm.job_dir,
        ssh_host=slurm.ssh_host,
        ssh_user=slurm.ssh_user,
        bindpcie=slurm.bindpcie,
        additional_parameters=slurm.additional_parameters,
    )


def preflight(recipe: Recipe, executor: str, dryrun: bool) -> None:
    """Refuse, before submission, anything that would fail once the job starts."""
    from dsv3_recipes.plan import check_launch

    check_launch(recipe)
    if executor == "local":
        _check_local_data(recipe)  # cluster paths are only visible inside the job's mounts
        if not dryrun:
            field = "shrink" if recipe.shrink else "launch.gpus_per_node"
            check_local_machine(recipe.launch.num_gpus, f"recipe {recipe.name}", field)


def _check_local_data(recipe: Recipe) -> None:
    d = recipe.dataset
    if d.mock:
        return
    for section in ("data_paths", "validation_paths"):
        for prefix in blend_prefixes(getattr(d, section), f"dataset.{section}"):
            missing = [ext for ext in (".bin", ".idx") if not os.path.isfile(prefix + ext)]
            if missing:
                raise RecipeError(f"dataset.{section}", f"{prefix}{missing[0]} does not exist")
            mlperf_rules.idx_token_count(prefix + ".idx", f"dataset.{section}")  # a readable index


def local_gpu_count() -> int:
    """GPUs visible here, asked of nvidia-smi: the launch side has no torch."""
    if shutil.which("nvidia-smi") is None:
        return 0
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU ")) if out.returncode == 0 else 0


def check_local_machine(gpus: int, what: str, field: str) -> None:
    """Refuse a local run this machine cannot hold: fewer GPUs than ``what`` needs, or no train side."""
    found = local_gpu_count()
    if found < gpus:
        raise RecipeError(
            field,
            f"{what} needs {gpus} GPU(s), this machine has {found}; "
            "use --dryrun to render the launch, or --executor slurm",
        )
    if importlib.util.find_spec("megatron.bridge") is None:
        raise RecipeError(
            "executor",
            "the train side is not installed here: `uv sync --extra train`, or run in the container",
        )


def launch(
    name: str,
    overrides: Sequence[str],
    executor: str = "local",
    dryrun: bool = False,
    slurm: SlurmOptions | None = None,
    shrink_gpus: int | None = None,
) -> None:
    """Build, check and run (or dry-run) a recipe on an executor, shrunk to ``shrink_gpus`` if given."""
    if executor not in EXECUTORS:
        raise RecipeError("executor", f"unknown executor {executor!r}; allowed: {', '.join(EXECUTORS)}")
    capabilities = None
    if shrink_gpus is not None and executor != "local":
        # A cluster job runs in the project's image, not on this login node.
        gpu_type = recipe_of(build_task(name, overrides)).launch.gpu_type
        capabilities = Capabilities.image(gpu_type)
    task = build_task(name, overrides, shrink_gpus, capabilities)
    recipe = recipe_of(task)
    preflight(recipe, executor, dryrun)
    chosen = make_executor(executor, recipe, slurm)
    if dryrun:
        print(render_launch(task, chosen, recipe.name))
    else:
        run.run(task, executor=chosen, name=recipe.name)


def render_launch(task: run.Partial, executor: run.Executor, name: str) -> str:
    """What would be submitted: the sbatch script, or the local torchrun command and environment."""
    with run.Experiment(name, log_level="ERROR") as exp:
        exp.add(task, executor=executor, name=name)
        exp.dryrun(log=False)  # renders, then deletes the experiment directory
    request = exp.jobs[0]._dryrun_info.request
    if hasattr(request, "materialize"):
        return request.materialize()
    lines = []
    for replicas in request.role_params.values():
        for replica in replicas:
            lines += [f"export {k}={shlex.quote(str(v))}" for k, v in sorted(replica.env.items())]
            lines.append(shlex.join(replica.args))
    return "\n".join(lines)
