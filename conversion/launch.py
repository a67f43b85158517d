"""Launch side of the conversion tasks: check the inputs on this machine, build the NeMo-Run task, pick
the executor (local torchrun or a Slurm job) and run it, or print what would run.

Paths a local run uses must exist here. A Slurm job's paths are its container's: they must be
absolute, are checked here when this machine sees them (a shared file system) and in the job always,
and are mounted in the job's container as pretrain's are (``job_paths``).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import nemo_run as run

from conversion import checks, tasks
from conversion.checks import Parallelism
from dsv3_recipes.launch import executors
from dsv3_recipes.launch.job_paths import RecipePath
from dsv3_recipes.launch.submit import LaunchOptions, SlurmOptions, check_local_machine, run_task
from dsv3_recipes.recipe.images import image_for
from dsv3_recipes.recipe.schema import RecipeError

EXECUTORS = executors.EXECUTORS


@dataclass(frozen=True)
class ConversionJob:
    """One conversion task and the ranks it needs."""

    name: str
    task: run.Partial
    parallel: Parallelism
    paths: tuple[RecipePath, ...] = field(default=())  # what the job reads and writes, to mount


class _Paths:
    """Where the job's paths are checked: all here for a local run, those visible here for Slurm."""

    def __init__(self, executor: str):
        if executor not in EXECUTORS:
            raise RecipeError("--executor", f"unknown executor {executor!r}; allowed: {', '.join(EXECUTORS)}")
        self.local = executor == "local"
        self.seen: list[RecipePath] = []

    def _checkable(self, path: str, arg: str, output: bool = False, is_dir: bool = True) -> bool:
        self.seen.append(RecipePath(arg, path, output=output, is_dir=is_dir))
        if self.local:
            return True
        if not Path(path).is_absolute():
            raise RecipeError(arg, f"{path} must be an absolute path: a Slurm job runs in another directory")
        return Path(path).exists()

    def _as_given(self, path: str) -> str:
        return str(Path(path).resolve()) if self.local else path

    def hf(self, path: str, arg: str) -> tuple[str, Optional[checks.HFCheckpoint]]:
        checkpoint = checks.check_hf_checkpoint(path, arg) if self._checkable(path, arg) else None
        if checkpoint and checkpoint.is_fp8:
            print(
                f"{arg}: FP8 e4m3 weights with 128x128 scales: Megatron-Bridge's DeepSeekV3Bridge "
                "dequantizes them to BF16 as it loads them (maybe_modify_loaded_hf_weight -> "
                "dequantize_fp8_blockwise)"
            )
        return self._as_given(path), checkpoint

    def megatron(self, path: str, arg: str) -> str:
        if self._checkable(path, arg):
            checks.check_megatron_checkpoint(path, arg)
        return self._as_given(path)

    def output(self, path: str, arg: str) -> str:
        # is_dir=False: the batch script makes only the parent; the task makes the directory itself
        if self._checkable(path, arg, output=True, is_dir=False):
            checks.check_output_dir(path, arg)
        return self._as_given(path)

    def file(self, path: str, arg: str) -> str:
        """An output file (the verification's report)."""
        self._checkable(path, arg, output=True, is_dir=False)
        return self._as_given(path)


def _check_parallelism(checkpoint: Optional[checks.HFCheckpoint], parallel: Parallelism) -> None:
    if checkpoint is not None:
        checks.check_parallelism(checkpoint.config, parallel)


def import_job(hf_path: str, megatron_path: str, parallel: Parallelism, executor: str) -> ConversionJob:
    paths = _Paths(executor)
    hf_path, source = paths.hf(hf_path, "--hf-path")
    _check_parallelism(source, parallel)
    task = run.Partial(
        tasks.import_hf,
        hf_path=hf_path,
        megatron_path=paths.output(megatron_path, "--megatron-path"),
        tp=parallel.tp,
        pp=parallel.pp,
        ep=parallel.ep,
    )
    return ConversionJob("convert-import", task, parallel, tuple(paths.seen))


def export_job(
    megatron_path: str, hf_path: str, hf_reference: str, parallel: Parallelism, executor: str
) -> ConversionJob:
    paths = _Paths(executor)
    hf_reference, reference = paths.hf(hf_reference, "--hf-reference")
    _check_parallelism(reference, parallel)
    task = run.Partial(
        tasks.export_hf,
        megatron_path=paths.megatron(megatron_path, "--megatron-path"),
        hf_path=paths.output(hf_path, "--hf-path"),
        hf_reference=hf_reference,
        tp=parallel.tp,
        pp=parallel.pp,
        ep=parallel.ep,
    )
    return ConversionJob("convert-export", task, parallel, tuple(paths.seen))


def verify_job(
    hf_path: str,
    megatron_path: str,
    parallel: Parallelism,
    executor: str,
    *,
    batch_size: int,
    seq_length: int,
    max_mean_rel_error: float,
    min_top1_agreement: float,
    report_path: Optional[str],
) -> ConversionJob:
    if not 0 < max_mean_rel_error < math.inf:  # NaN fails both
        raise RecipeError("--max-mean-rel-error", f"must be a finite number > 0, got {max_mean_rel_error}")
    if not 0 < min_top1_agreement <= 1:
        raise RecipeError(
            "--min-top1-agreement", f"must be in (0, 1], got {min_top1_agreement}: else the check cannot fail"
        )
    paths = _Paths(executor)
    hf_path, source = paths.hf(hf_path, "--hf-path")
    _check_parallelism(source, parallel)
    if seq_length % parallel.tp:
        raise RecipeError("--seq-length", f"must be a multiple of --tp {parallel.tp} (sequence parallelism)")
    task = run.Partial(
        tasks.verify,
        hf_path=hf_path,
        megatron_path=paths.megatron(megatron_path, "--megatron-path"),
        tp=parallel.tp,
        pp=parallel.pp,
        ep=parallel.ep,
        batch_size=batch_size,
        seq_length=seq_length,
        max_mean_rel_error=max_mean_rel_error,
        min_top1_agreement=min_top1_agreement,
        report_path=paths.file(report_path, "--report") if report_path else None,
    )
    return ConversionJob("convert-verify", task, parallel, tuple(paths.seen))


def generate_job(
    hf_path: str, megatron_path: str, prompt: str, max_new_tokens: int, parallel: Parallelism, executor: str
) -> ConversionJob:
    paths = _Paths(executor)
    hf_path, source = paths.hf(hf_path, "--hf-path")
    _check_parallelism(source, parallel)
    if source is not None and not source.has_tokenizer:
        raise RecipeError("--hf-path", f"{hf_path} has no tokenizer to encode the prompt with")
    task = run.Partial(
        tasks.generate,
        hf_path=hf_path,
        megatron_path=paths.megatron(megatron_path, "--megatron-path"),
        prompt=prompt,
        max_new_tokens=max_new_tokens,
        tp=parallel.tp,
        pp=parallel.pp,
        ep=parallel.ep,
    )
    return ConversionJob("convert-generate", task, parallel, tuple(paths.seen))


def make_executor(
    kind: str,
    world_size: int,
    *,
    slurm: Optional[SlurmOptions],
    gpus_per_node: int,
    gpu_type: str,
    dryrun: bool,
    paths: tuple[RecipePath, ...] = (),
) -> run.Executor:
    """torchrun with one process per rank here, or a Slurm job of ceil(ranks / GPUs per node) nodes
    that mounts ``paths``."""
    if kind == "local":
        if not dryrun:
            check_local_machine(world_size, "the conversion (PP x lcm(TP, EP))", "--tp/--pp/--ep")
        return executors.local(gpus=world_size)
    if kind != "slurm":
        raise RecipeError("--executor", f"unknown executor {kind!r}; allowed: {', '.join(EXECUTORS)}")
    options = (slurm or SlurmOptions()).executor_kwargs(image_for(gpu_type))
    if world_size > gpus_per_node and world_size % gpus_per_node:
        raise RecipeError(
            "--gpus-per-node",
            f"{world_size} ranks do not fill nodes of {gpus_per_node} GPUs; change TP/PP/EP",
        )
    return executors.for_paths(
        paths,
        **options,
        nodes=math.ceil(world_size / gpus_per_node),
        gpus_per_node=min(world_size, gpus_per_node),
    )


def submit(job: ConversionJob, executor: run.Executor, options: LaunchOptions) -> None:
    """Run the job on the executor and wait (or detach), or print the rendered launch and run nothing."""
    if options.dryrun:
        print(f"# {job.name}: {job.task!r} on {job.parallel.world_size} rank(s)", file=sys.stderr)
    run_task(job.task, executor, job.name, options)
