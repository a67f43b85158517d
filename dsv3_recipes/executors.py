"""Where a task runs: a local torchrun launch or a Slurm + pyxis/enroot job.

Executors are separate from tasks (the NeMo-Run way): any recipe runs on either. Secrets never
enter a script: Slurm forwards them by name (pyxis ``--container-env``) from the submitting shell,
and a local launch inherits them from the caller's environment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import nemo_run as run

from dsv3_recipes.images import BINDPCIE_PATH
from dsv3_recipes.recipe import Recipe, RecipeError

EXECUTORS = ("local", "slurm")
SECRET_ENV_VARS = ("HF_TOKEN", "WANDB_API_KEY")
_SECRET_NAME = re.compile(r"(TOKEN|API_KEY|SECRET|PASSWORD)$")


def check_no_secrets(env_vars: Mapping[str, str]) -> None:
    """Refuse env vars that look like credentials: they would be written into a launch script."""
    for name in env_vars:
        if name in SECRET_ENV_VARS or _SECRET_NAME.search(name):
            raise RecipeError(
                f"env_vars.{name}", "looks like a secret; export it in your shell, it is forwarded by name"
            )


def local(gpus: int = 1, env_vars: Mapping[str, str] | None = None) -> run.LocalExecutor:
    """torchrun on this machine with one process per GPU."""
    env = dict(env_vars or {})
    check_no_secrets(env)
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
    env_vars: Mapping[str, str] | None = None,
    secrets: Sequence[str] = SECRET_ENV_VARS,
    job_dir: str = "",
    ssh_host: str | None = None,
    ssh_user: str | None = None,
    additional_parameters: Mapping[str, object] | None = None,
) -> run.SlurmExecutor:
    """One Slurm job, one srun task per GPU (Megatron reads the SLURM_* ranks; no torchrun).

    ``segment``: nodes per NVLink domain (GB200 NVL72: EP32 needs 8 nodes of 4 GPUs in one rack).
    ``bindpcie``: path to mlperf-common's bindpcie, placed in front of every rank's command.
    ``ssh_host``: submit through SSH from a laptop; without it sbatch runs on this login node.
    """
    env = dict(env_vars or {})
    check_no_secrets(env)
    tunnel = (
        run.SSHTunnel(host=ssh_host, user=ssh_user or "", job_dir=job_dir)
        if ssh_host
        else run.LocalTunnel(job_dir=job_dir)
    )
    return run.SlurmExecutor(
        account=account,
        partition=partition,
        nodes=nodes,
        ntasks_per_node=gpus_per_node,
        gpus_per_node=gpus_per_node,
        time=time,
        container_image=container_image,
        container_mounts=list(container_mounts),
        container_env=list(secrets) or None,
        segment=segment,
        # srun's first non-option word is the program: bindpcie then execs the rank's python.
        srun_args=["--mpi=pmix", *([bindpcie] if bindpcie else [])],
        env_vars=env,
        exclusive=True,
        tunnel=tunnel,
        packager=run.Packager(),
        additional_parameters=dict(additional_parameters or {}),
    )


def for_recipe(kind: str, recipe: Recipe, **options: object) -> run.Executor:
    """The executor a recipe needs: its GPU count, env vars, NVL segment and bindpcie."""
    if kind == "local":
        return local(gpus=recipe.launch.num_gpus, env_vars=recipe.run_env_vars)
    if kind == "slurm":
        bindpcie = options.pop("bindpcie", None) or (BINDPCIE_PATH if recipe.launch.bindpcie else None)
        return slurm(
            nodes=recipe.launch.num_nodes,
            gpus_per_node=recipe.launch.gpus_per_node,
            segment=recipe.launch.nvl_segment_nodes,
            bindpcie=bindpcie,  # type: ignore[arg-type]
            env_vars=recipe.run_env_vars,
            **options,  # type: ignore[arg-type]
        )
    raise RecipeError("executor", f"unknown executor {kind!r}; allowed: {', '.join(EXECUTORS)}")
