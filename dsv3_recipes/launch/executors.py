"""Where a task runs: a local torchrun launch or a Slurm + pyxis/enroot job.

Executors are separate from tasks (the NeMo-Run way): any recipe runs on either. Secrets never
enter a script: Slurm forwards them by name (pyxis ``--container-env``) from the submitting shell,
and a local launch inherits them from the caller's environment.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence

import nemo_run as run

from dsv3_recipes.launch import code_check, job_paths, safe
from dsv3_recipes.launch.options import EXECUTORS
from dsv3_recipes.recipe.images import BINDPCIE_PATH
from dsv3_recipes.recipe.schema import ENV_NAME, Recipe, RecipeError

SECRET_ENV_VARS = ("HF_TOKEN", "WANDB_API_KEY")


def local(gpus: int = 1, env_vars: Mapping[str, str] | None = None) -> run.LocalExecutor:
    """torchrun on this machine with one process per GPU."""
    safe.count("executor.gpus", gpus)
    env = dict(env_vars or {})
    safe.env_vars(env)
    return run.LocalExecutor(ntasks_per_node=gpus, launcher="torchrun", env_vars=env)


def slurm(
    *,
    account: str,
    partition: str | None = None,
    nodes: int = 1,
    gpus_per_node: int = 8,
    time: str = "04:00:00",
    container_image: str | None = None,
    container_mounts: Sequence[str] = (),
    segment: int | None = None,
    bindpcie: str | None = None,
    mpi: str | None = None,
    gres_gpus_per_node: int | None = None,
    env_vars: Mapping[str, str] | None = None,
    secrets: Sequence[str] = SECRET_ENV_VARS,
    setup_lines: Sequence[str] = (),
    job_dir: str = "",
    ssh_host: str | None = None,
    ssh_user: str | None = None,
    additional_parameters: Mapping[str, object] | None = None,
    dependency: str | None = None,
    qos: str | None = None,
    requeue: bool = False,
    array: str | None = None,
    max_restarts: int = 0,
) -> run.SlurmExecutor:
    """One Slurm job, one srun task per GPU (Megatron reads the SLURM_* ranks; no torchrun).

    ``segment``: nodes per NVLink domain (GB200 NVL72: EP32 needs 8 nodes of 4 GPUs in one rack).
    ``bindpcie``: path to mlperf-common's bindpcie, placed in front of every rank's command.
    ``mpi``: srun's ``--mpi`` plugin (e.g. ``pmix``); None leaves the cluster's MpiDefault, since the
    ranks find each other through the SLURM_* variables and not every cluster builds pmix.
    ``gres_gpus_per_node``: render ``#SBATCH --gpus-per-node`` ([titan-dsv3]: set it to all GPUs of a node
    where the cluster has GPU GRES; a cluster without GRES rejects it, so None renders nothing).
    ``setup_lines``: shell lines the batch script runs before srun (e.g. making output directories).
    ``ssh_host``: submit through SSH from a laptop, ``job_dir`` then being the job's directory on the
    cluster; without it sbatch runs on this login node and the job's files live under NeMo-Run's home
    (``run.config.set_nemorun_home`` or ``$NEMORUN_HOME``), the directory the compute nodes read.
    ``time``, ``dependency`` (e.g. ``afterok:123``), ``qos`` and ``array`` (e.g. ``0-2``) are checked
    for Slurm's formats with the other options (``safe.slurm_options``). ``requeue``: the job may be
    requeued (preemption, node failure, ``scontrol requeue``); ``max_restarts``: a job that fails is
    requeued up to that many times (NeMo-Run's retries). A recipe task resumes from its checkpoints
    either way (``submit.resumable``).
    The job checks at start that its image holds this launcher's code (``code_check``).
    Every value that reaches the script is checked (``safe``) or quoted: NeMo-Run renders the
    ``export`` values unquoted, so they are ``shlex.quote``-d here.
    """
    env = dict(env_vars or {})
    safe.env_vars(env)
    safe.slurm_options(
        "executor.{}".format,
        dict(
            account=account,
            partition=partition,
            time=time,
            container_image=container_image,
            container_mounts=container_mounts,
            bindpcie=bindpcie,
            mpi=mpi,
            gres_gpus_per_node=gres_gpus_per_node,
            job_dir=job_dir,
            ssh_host=ssh_host,
            ssh_user=ssh_user,
            additional_parameters=additional_parameters,
            dependency=dependency,
            qos=qos,
            array=array,
            max_restarts=max_restarts,
        ),
    )
    for arg, value in (("nodes", nodes), ("gpus_per_node", gpus_per_node), ("segment", segment)):
        if value is not None:
            safe.count(f"executor.{arg}", value)
    for secret in secrets:
        if not isinstance(secret, str) or not ENV_NAME.fullmatch(secret):
            raise RecipeError("executor.secrets", f"{secret!r} is not a shell variable name")
    extra = dict(additional_parameters or {})
    if dependency is not None:  # a user's job ids: NeMo-Run's `dependencies` take its own job handles
        extra["dependency"] = dependency
    if requeue:
        extra["requeue"] = True
    if job_dir and not ssh_host:
        raise RecipeError(
            "executor.job_dir",
            "only with ssh_host: on the login node the job lives under NeMo-Run's home "
            "(run.config.set_nemorun_home, or $NEMORUN_HOME)",
        )
    if gres_gpus_per_node is not None and gres_gpus_per_node < gpus_per_node:
        raise RecipeError(
            "executor.gres_gpus_per_node",
            f"{gres_gpus_per_node} GPUs per node for {gpus_per_node} ranks per node "
            "(DGX Cloud's TorchTitan recipe: all GPUs)",
        )
    tunnel = (
        run.SSHTunnel(host=ssh_host, user=ssh_user or "", job_dir=job_dir)
        if ssh_host
        else run.LocalTunnel(job_dir="")
    )
    return run.SlurmExecutor(
        account=account,
        partition=partition,
        nodes=nodes,
        ntasks_per_node=gpus_per_node,
        gpus_per_node=gres_gpus_per_node,
        time=time,
        qos=qos,
        array=array,
        retries=max_restarts,
        container_image=container_image,
        container_mounts=list(container_mounts),
        container_env=list(secrets) or None,
        segment=segment,
        # srun's first non-option word is the program: bindpcie then execs the rank's python.
        srun_args=[*([f"--mpi={mpi}"] if mpi else []), *([bindpcie] if bindpcie else [])],
        env_vars={k: shlex.quote(v) for k, v in (env | code_check.launcher_env()).items()},
        setup_lines="\n".join(setup_lines) or None,
        exclusive=True,
        tunnel=tunnel,
        packager=run.Packager(),
        additional_parameters=extra,
    )


def check_size(recipe: Recipe, executor: run.Executor) -> None:
    """The executor runs as many ranks as the recipe's layout needs, on as many nodes: a 256-GPU recipe
    on one node would be refused by Megatron only once the job starts (every door; ``for_recipe``
    sizes an executor from the recipe)."""
    if isinstance(executor, run.SlurmExecutor):
        found = (executor.nodes, executor.ntasks_per_node)
    elif isinstance(executor, run.LocalExecutor):
        found = (1, executor.ntasks_per_node)
    else:
        return
    launch = recipe.launch
    if found != (launch.num_nodes, launch.gpus_per_node):
        raise RecipeError(
            "executor",
            f"{found[0]} node(s) x {found[1]} GPU(s) for recipe {recipe.name}, which runs on "
            f"{launch.num_nodes} x {launch.gpus_per_node} = {launch.num_gpus} GPUs (launch.num_nodes, "
            "launch.gpus_per_node); executors.for_recipe(kind, recipe) sizes the executor from the recipe",
        )


def for_recipe(kind: str, recipe: Recipe, **options: object) -> run.Executor:
    """The executor a recipe needs: its GPU count, env vars, NVL segment, bindpcie, and on Slurm the
    mounts of every path it reads and writes (``job_paths``)."""
    if kind == "local":
        return local(gpus=recipe.launch.num_gpus, env_vars=recipe.run_env_vars)
    if kind == "slurm":
        bindpcie = options.pop("bindpcie", None) or (BINDPCIE_PATH if recipe.launch.bindpcie else None)
        user_mounts = list(options.pop("container_mounts", ()))  # type: ignore[call-overload]
        return slurm(
            **_mounted(user_mounts, job_paths.slurm_mounts(recipe, user_mounts)),
            nodes=recipe.launch.num_nodes,
            gpus_per_node=recipe.launch.gpus_per_node,
            segment=recipe.launch.nvl_segment_nodes,
            bindpcie=bindpcie,  # type: ignore[arg-type]
            env_vars=recipe.run_env_vars,
            **options,  # type: ignore[arg-type]
        )
    raise RecipeError("executor", f"unknown executor {kind!r}; allowed: {', '.join(EXECUTORS)}")


def for_paths(paths: Sequence[job_paths.RecipePath], **options: object) -> run.SlurmExecutor:
    """A Slurm job of a task that is no recipe (preprocess, convert) and names its paths: each must be
    absolute (the job runs in its job directory), each is mounted, and its outputs' directories made."""
    user_mounts = list(options.pop("container_mounts", ()))  # type: ignore[call-overload]
    found = job_paths.path_mounts(list(paths), user_mounts, relative_outputs=False)
    return slurm(**_mounted(user_mounts, found), **options)  # type: ignore[arg-type]


def _mounted(user_mounts: list[str], found: tuple[list[str], list[str]]) -> dict[str, list[str]]:
    mounts, mkdirs = found
    return dict(
        container_mounts=[*user_mounts, *mounts],
        setup_lines=[f"mkdir -p {shlex.join(mkdirs)}"] if mkdirs else [],
    )
