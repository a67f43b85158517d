"""The executor arguments every launching command shares: ``dsv3 pretrain``, ``preprocess`` and
``convert`` take the same ``--executor``, dry-run, detach and Slurm options, parsed here once.

Slurm options come from flags first, then [titan-dsv3]'s environment (``SBATCH_ACCOUNT``,
``SBATCH_PARTITION``, ``SBATCH_GPUS_PER_NODE``, ``RUN_CONF_IMAGE``, ``RUN_CONF_MOUNTS``,
``ADDITIONAL_SLURM_PARAMS``). Standard library only: ``dsv3 --help`` and ``dsv3 list`` build these
parsers without importing NeMo-Run.
"""

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional

from dsv3_recipes.launch import safe
from dsv3_recipes.recipe.schema import RecipeError

EXECUTORS = ("local", "slurm")


class JobFailed(RuntimeError):
    """A submitted job ended in another state than SUCCEEDED (the message names it): a failed command."""


class SubmitRefused(ValueError):
    """The cluster refused the submission (sbatch's message) or could not be reached: bad input, exit 2."""


@dataclass
class SlurmOptions:
    """Slurm job options: flags first, then [titan-dsv3]'s environment (SBATCH_*, RUN_CONF_*). NeMo-Run's
    CLI sets them too (``nemo_cli``): its parser reads ``Optional[X]``, not ``X | None``."""

    account: Optional[str] = None
    partition: Optional[str] = None
    time: str = "04:00:00"
    container_image: Optional[str] = None
    container_mounts: list[str] = field(default_factory=list)
    job_dir: str = ""
    ssh_host: Optional[str] = None
    ssh_user: Optional[str] = None
    bindpcie: Optional[str] = None
    mpi: Optional[str] = None
    gres_gpus_per_node: Optional[int] = None
    additional_parameters: dict[str, object] = field(default_factory=dict)
    dependency: Optional[str] = None
    qos: Optional[str] = None
    requeue: bool = False
    array: Optional[str] = None
    max_restarts: int = 0

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("slurm executor")
        g.add_argument("--account", help="Slurm account (default: $SBATCH_ACCOUNT)")
        g.add_argument("--partition", help="Slurm partition (default: $SBATCH_PARTITION)")
        g.add_argument(
            "--time", default="04:00:00", help="time limit: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"
        )
        g.add_argument("--qos", help="Slurm quality of service")
        g.add_argument(
            "--dependency",
            metavar="TYPE:JOBID[:JOBID...]",
            help="start after other jobs, in sbatch's syntax (e.g. afterok:1234, afterany:12:13)",
        )
        g.add_argument("--array", metavar="SPEC", help="a job array for sweeps: 0-2, 1,3,5, 0-99%%10")
        g.add_argument(
            "--requeue",
            action="store_true",
            help="the job may be requeued (preemption, node failure); it resumes from its latest checkpoint",
        )
        g.add_argument(
            "--max-restarts",
            type=int,
            default=0,
            metavar="N",
            help="requeue a job that fails, at most N times; each restart resumes from the latest checkpoint",
        )
        g.add_argument("--container-image", help="default: $RUN_CONF_IMAGE, else the recipe GPU's image")
        g.add_argument("--container-mounts", help="comma-separated src:dst (default: $RUN_CONF_MOUNTS)")
        g.add_argument(
            "--job-dir",
            default="",
            help="where NeMo-Run keeps the job's files: on the cluster with --ssh-host, else NeMo-Run's "
            "home on this login node (default: $NEMORUN_HOME, ~/.nemo_run)",
        )
        g.add_argument("--ssh-host", help="submit over SSH (default: sbatch on this machine)")
        g.add_argument("--ssh-user")
        g.add_argument(
            "--bindpcie",
            help="path of bindpcie in the container (default: the image's /usr/local/bin/bindpcie)",
        )
        g.add_argument("--mpi", help="srun --mpi=MPI, e.g. pmix (default: the cluster's MpiDefault)")
        g.add_argument(
            "--gres-gpus-per-node",
            type=int,
            help="render #SBATCH --gpus-per-node=N, for clusters with GPU GRES (DGX Cloud's TorchTitan "
            "recipe: all GPUs of a node; default: $SBATCH_GPUS_PER_NODE, else not rendered)",
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "SlurmOptions":
        """The options no flag set: the defaults and [titan-dsv3]'s environment (NeMo-Run's CLI)."""
        p = argparse.ArgumentParser()
        cls.add_arguments(p)
        return cls.from_args_and_env(p.parse_args([]), env)

    @classmethod
    def from_args_and_env(
        cls, args: argparse.Namespace, env: Mapping[str, str] | None = None
    ) -> "SlurmOptions":
        env = os.environ if env is None else env
        mounts = args.container_mounts or env.get("RUN_CONF_MOUNTS", "")
        gres = args.gres_gpus_per_node
        if gres is None and env.get("SBATCH_GPUS_PER_NODE"):
            gres = env["SBATCH_GPUS_PER_NODE"]
            if not gres.isdigit():
                raise RecipeError("SBATCH_GPUS_PER_NODE", f"expected a GPU count, got {gres!r}")
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
            mpi=args.mpi,
            gres_gpus_per_node=int(gres) if gres is not None else None,
            additional_parameters=parse_additional_slurm_params(env.get("ADDITIONAL_SLURM_PARAMS", "")),
            dependency=args.dependency,
            qos=args.qos,
            requeue=args.requeue,
            array=args.array,
            max_restarts=args.max_restarts,
        )

    def executor_kwargs(self, default_image: str | None = None) -> dict[str, object]:
        """``executors.slurm``'s keyword arguments; refuses a job without an account or an image the
        nodes can pull (``default_image``: the image when none is given, e.g. the recipe GPU's)."""
        account_flag, image_flag = self.flag("account"), self.flag("container_image")
        if not self.account:
            raise RecipeError(account_flag, f"Slurm needs an account: {account_flag} or $SBATCH_ACCOUNT")
        image = self.container_image or default_image
        if not image:
            raise RecipeError(
                image_flag, f"the job runs in the training image: {image_flag} or $RUN_CONF_IMAGE"
            )
        if "/" not in image.split(":")[0]:
            raise RecipeError(
                image_flag,
                f"{image} is a local tag the nodes cannot pull: push it (docker/README.md) and set "
                f"$DSV3_IMAGE_REGISTRY, or pass {image_flag}",
            )
        kwargs = dict(
            account=self.account,
            partition=self.partition,
            time=self.time,
            container_image=image,
            container_mounts=self.container_mounts,
            job_dir=self.job_dir if self.ssh_host else "",  # else NeMo-Run's home (launch._job_home)
            ssh_host=self.ssh_host,
            ssh_user=self.ssh_user,
            bindpcie=self.bindpcie,
            mpi=self.mpi,
            gres_gpus_per_node=self.gres_gpus_per_node,
            additional_parameters=self.additional_parameters,
            dependency=self.dependency,
            qos=self.qos,
            requeue=self.requeue,
            array=self.array,
            max_restarts=self.max_restarts,
        )
        safe.slurm_options(self.flag, kwargs)
        return kwargs

    @staticmethod
    def flag(option: str) -> str:
        """The command line's name of a Slurm option, for messages."""
        return (
            "ADDITIONAL_SLURM_PARAMS"
            if option == "additional_parameters"
            else "--" + option.replace("_", "-")
        )

    @property
    def resumes(self) -> bool:
        """Whether the job may start again (requeued or restarted), so it must resume, not start over."""
        return self.requeue or self.max_restarts > 0


def parse_additional_slurm_params(text: str) -> dict[str, object]:
    """Seed 003's ADDITIONAL_SLURM_PARAMS: ``key=value`` pairs and bare flags separated by ``;``."""
    params: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        key, sep, value = item.partition("=")
        params[key] = value if sep else True
    return params


@dataclass
class LaunchOptions:
    """Where a task runs and how this command follows it: dry run, wait for the end, or detach."""

    executor: str = "local"
    dryrun: bool = False
    dryrun_to: str | None = None  # write the rendered launch here instead of stdout
    detach: bool = False  # return once the Slurm job is submitted
    yes: bool = False  # submit without asking, also on a terminal
    overwrite: bool = False  # write over existing outputs (a dataset, another run's checkpoint)
    slurm: SlurmOptions = field(default_factory=SlurmOptions)

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--executor", "-e", default="local", help=f"one of {', '.join(EXECUTORS)}")
        p.add_argument(
            "--dryrun",
            action="store_true",
            help="print the launch (the sbatch script) on stdout, run nothing",
        )
        p.add_argument("--dryrun-to", metavar="FILE", help="write the --dryrun launch to FILE instead")
        p.add_argument(
            "--detach",
            action="store_true",
            help="return once the Slurm job is submitted; follow it with `nemo experiment status|logs`",
        )
        p.add_argument("--yes", "-y", action="store_true", help="submit to Slurm without asking")
        p.add_argument(
            "--overwrite",
            action="store_true",
            help="write over existing outputs (a dataset's .bin/.idx, another run's checkpoint.save)",
        )
        SlurmOptions.add_arguments(p)

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: Mapping[str, str] | None = None) -> "LaunchOptions":
        if args.executor not in EXECUTORS:
            raise RecipeError(
                "--executor", f"unknown executor {args.executor!r}; allowed: {', '.join(EXECUTORS)}"
            )
        return cls(
            executor=args.executor,
            dryrun=args.dryrun or bool(args.dryrun_to),
            dryrun_to=args.dryrun_to,
            detach=args.detach,
            yes=args.yes,
            overwrite=args.overwrite,
            slurm=SlurmOptions.from_args_and_env(args, env),
        )
