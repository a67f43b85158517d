"""What a recipe reads and writes, and the container mounts a Slurm job needs to see those paths.

A recipe names paths of the cluster's shared file system (data, tokenizer, checkpoints, logs). The
container sees each at the same path: ``slurm_mounts`` mounts the directory holding every path that no
``--container-mounts`` entry covers, and names the output directories the batch script creates before
``srun`` (a bind mount's source must exist). A relative input is refused: the job runs in its NeMo-Run
job directory, where it does not exist. A relative output lands in that job directory, which is fine
for metrics but not for a multi-node run's checkpoints (terabytes for 671B, under ``$HOME``): those
need an explicit ``checkpoint.save``.

Standard library only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from dsv3_recipes.launch import safe
from dsv3_recipes.recipe.schema import Recipe, RecipeError, blend_prefixes


@dataclass(frozen=True)
class RecipePath:
    field: str  # the dotted recipe field, for messages
    path: str
    output: bool  # the job writes it (a directory, or a file whose directory it creates)
    is_dir: bool


def recipe_paths(recipe: Recipe) -> list[RecipePath]:
    """Every file-system path the recipe's job reads or writes, as set (relative ones included)."""
    d, c = recipe.dataset, recipe.checkpoint
    found = [
        RecipePath(f"dataset.{section}", p, output=False, is_dir=False)  # a prefix: <p>.bin, <p>.idx
        for section in ("data_paths", "validation_paths")
        for p in blend_prefixes(getattr(d, section))  # Megatron's blends: weights between prefixes
    ]
    found += [
        RecipePath(name, p, output, is_dir=True)
        for name, p, output in (
            ("dataset.data_cache_path", d.data_cache_path, True),
            ("checkpoint.load", c.load, False),
            ("checkpoint.pretrained_checkpoint", c.pretrained_checkpoint, False),
            ("checkpoint.save", c.save, True),
            ("logger.tensorboard_dir", recipe.logger.tensorboard_dir, True),
            ("output_dir", recipe.output_dir, True),
        )
        if p
    ]
    if recipe.mlperf.log_file:
        found.append(RecipePath("mlperf.log_file", recipe.mlperf.log_file, output=True, is_dir=False))
    tokenizer = recipe.tokenizer.tokenizer_model
    if tokenizer and os.path.isabs(tokenizer):  # a relative name may be a Hugging Face hub id
        found.append(RecipePath("tokenizer.tokenizer_model", tokenizer, output=False, is_dir=True))
    return found


def mount_destination(mount: str) -> str:
    """``src:dst[:flags]`` or a bare ``path`` (pyxis: the same path inside)."""
    parts = mount.split(":")
    return os.path.normpath(parts[1] if len(parts) > 1 else parts[0])


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def check_checkpoint_dir(recipe: Recipe) -> None:
    """A multi-node run that saves (every ``save_interval`` steps, or at the end into ``save``) needs
    an absolute ``checkpoint.save`` on the shared file system."""
    c = recipe.checkpoint
    if recipe.launch.num_nodes == 1 or (c.save_interval is None and not c.save):
        return
    if not c.save or not os.path.isabs(c.save):
        raise RecipeError(
            "checkpoint.save",
            f"{'unset' if not c.save else repr(c.save) + ' is relative'} while the run saves "
            f"(checkpoint.save_interval={c.save_interval}) on {recipe.launch.num_nodes} nodes: the "
            "checkpoints would fill the job directory; give an absolute directory on the cluster's "
            "parallel file system",
        )


def slurm_mounts(recipe: Recipe, user_mounts: list[str]) -> tuple[list[str], list[str]]:
    """The mounts to add to ``user_mounts`` and the output directories to create before ``srun``."""
    check_checkpoint_dir(recipe)
    return path_mounts(recipe_paths(recipe), user_mounts)


def path_mounts(
    paths: list[RecipePath], user_mounts: list[str], relative_outputs: bool = True
) -> tuple[list[str], list[str]]:
    """``slurm_mounts`` of any job's paths (preprocess and convert name theirs by their options).
    ``relative_outputs``: a relative output lands in the job directory; else it is refused too."""
    covered = [mount_destination(m) for m in user_mounts]
    mounts: list[str] = []
    mkdirs: list[str] = []
    for p in paths:
        if not os.path.isabs(p.path):
            if p.output and relative_outputs:
                continue  # lands in the job directory, which NeMo-Run mounts
            raise RecipeError(p.field, f"{p.path} is relative: a Slurm job runs in its job directory")
        path = os.path.normpath(safe.absolute_path(p.field, p.path, mount=True))
        if any(_under(path, d) for d in covered):
            continue
        # Mount the directory that holds the path: it exists for an input, and the batch script makes
        # it for an output. A top-level path is mounted itself rather than the whole root.
        holder = os.path.dirname(path) if os.path.dirname(path) != "/" else path
        if p.output:
            mkdirs.append(path if p.is_dir else holder)
        if not any(_under(holder, m) for m in mounts):
            mounts = [m for m in mounts if not _under(m, holder)] + [holder]
    return [f"{m}:{m}" for m in sorted(mounts)], sorted(set(mkdirs))


def glob_directory(pattern: str) -> str:
    """The directory a file glob's matches lie under: its leading components without a wildcard."""
    parts = pattern.split("/")
    fixed = next((i for i, part in enumerate(parts) if any(c in part for c in "*?[")), len(parts) - 1)
    return "/".join(parts[:fixed]) or "/"
