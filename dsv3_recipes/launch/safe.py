"""The one rule for every string a user types or loads that reaches a shell, sbatch, srun, a path or an
env export: it matches a strict pattern here, or it is ``shlex.quote``-d where it is rendered.

NeMo-Run renders some values unquoted (``export KEY=value``, ``srun --output <job dir>/log-<name>``, the
job directory's ``mkdir -p`` on the login node, ``#SBATCH`` header lines, ``--container-mounts`` joined
with ``,``), so what lands there is checked here before any executor or experiment exists. Each refusal
is a ``RecipeError`` naming the field. Standard library only.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Mapping
from typing import Any

from dsv3_recipes.launch import slurm_args
from dsv3_recipes.recipe.schema import RecipeError, check_env_name

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Where NeMo-Run puts a path unquoted (the job directory) or joins paths with ':' and ',' (mounts).
_PATH = re.compile(r"[A-Za-z0-9._/+@=~-]+")
_MOUNT_PATH = re.compile(r"/[A-Za-z0-9._/+@=~-]*")
# A container image: a registry reference (enroot's `host#repo:tag`, docker's `host/repo:tag@sha256:...`)
# or a squashfs file.
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@#+-]*")
_SBATCH_KEY = re.compile(r"(?!-)[-a-z0-9]+")  # rendered as --KEY
# *TOKEN* (not TOKENIZERS_PARALLELISM), a KEY word (WANDB_API_KEY, not NCCL_IB_PKEY), *SECRET*, *PASSW*.
_SECRET_NAME = re.compile(r"TOKEN(?!IZER)|(^|_)(API)?KEYS?(_|$)|SECRET|PASSW|CREDENTIAL")
# Known credentials the pattern misses (HF_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY match it).
KNOWN_SECRETS = ("GITHUB_PAT", "GH_PAT", "DOCKER_AUTH_CONFIG")
CONTROL = ("\n", "\r", "\0")


def one_line(field: str, value: str) -> str:
    """Refuse a newline, carriage return or NUL: in a ``#SBATCH`` line it starts a shell line."""
    if not isinstance(value, str):
        raise RecipeError(field, f"expected text, got {type(value).__name__} {value!r}")
    if any(c in value for c in CONTROL):
        raise RecipeError(field, f"{value!r} holds a newline or NUL; give it on one line")
    return value


def name(field: str, value: str) -> str:
    """A name that becomes a file or directory name, a job name or a Slurm account: letters, digits and
    ``._-``, no ``/`` and no ``..`` (it would leave its directory)."""
    one_line(field, value)
    if not _NAME.fullmatch(value) or ".." in value:
        raise RecipeError(
            field, f"{value!r} is not a name: letters, digits and ._- (first a letter or digit), no '..'"
        )
    return value


def path(field: str, value: str) -> str:
    """A file-system path NeMo-Run renders unquoted (``mkdir -p`` of the job directory)."""
    one_line(field, value)
    if not _PATH.fullmatch(value):
        raise RecipeError(
            field, f"{value!r}: a path of letters, digits and ._/+@=~- (no spaces or shell characters)"
        )
    return value


def absolute_path(field: str, value: str, mount: bool = False, strict: bool = False) -> str:
    """An absolute path; a mounted one (``mount``) also without ``:``, ``,`` or spaces, which pyxis'
    ``--container-mounts=src:dst[:flags],...`` would split; ``strict``: a program srun runs, the same."""
    one_line(field, value)
    if not value.startswith("/"):
        raise RecipeError(field, f"{value!r} is not an absolute path")
    if (mount or strict) and not _MOUNT_PATH.fullmatch(value):
        allowed = "letters, digits and ._/+@=~- only (no ':', ',' or spaces)"
        raise RecipeError(
            field, f"{value!r} {'cannot be mounted' if mount else 'is not a plain path'}: {allowed}"
        )
    return value


def mount(field: str, value: str) -> str:
    """One pyxis mount, ``src:dst[:flags]`` or a bare absolute path."""
    one_line(field, value)
    src, *rest = value.split(":")
    if len(rest) > 2 or (len(rest) == 2 and rest[1] not in ("ro", "rw", "private", "slave", "shared")):
        raise RecipeError(field, f"{value!r} is not src:dst[:ro|rw]")
    for part in (src, *rest[:1]):
        absolute_path(field, part, mount=True)
    return value


def image(field: str, value: str) -> str:
    """A container image reference or squashfs path: no spaces (srun would read a second option)."""
    one_line(field, value)
    if not _IMAGE.fullmatch(value) and not (value.startswith("/") and _MOUNT_PATH.fullmatch(value)):
        raise RecipeError(field, f"{value!r} is not an image reference (registry/repo:tag, or a .sqsh path)")
    return value


def sbatch_key(field: str, value: str) -> str:
    """An ``#SBATCH --key``: NeMo-Run renders the key unquoted."""
    if not _SBATCH_KEY.fullmatch(value.replace("_", "-")):
        raise RecipeError(field, f"{value!r} is not an sbatch option name (letters, digits, -)")
    return value


# What NeMo-Run's CLI parser would import (and call): a dotted name (a call's parentheses, spaces and
# any other expression are no bare word).
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")
# A bare word NeMo-Run reads as the string (or number) it is: no call, index, expression or space.
_WORD = re.compile(r"[A-Za-z0-9_+\-./:@%~,]*")


def cli_value(field: str, value: str) -> str:
    """A ``KEY=VALUE`` value for NeMo-Run's CLI parser, which imports a dotted name and calls it, and
    evaluates expressions (``a if b else c``): a Python literal (number, quoted string, list, dict,
    ``True``/``None``) or a bare word that is no dotted name; nothing else reaches the parser."""
    one_line(field, value)
    try:
        ast.literal_eval(value)
        return value
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        pass
    if _DOTTED.fullmatch(value) or not _WORD.fullmatch(value):
        raise RecipeError(
            field,
            f"{value!r} is not a literal value: NeMo-Run's parser would run it as code (a dotted name, a "
            "call or an expression); quote a string that must hold such characters",
        )
    return value


def is_secret(env_name: str) -> bool:
    """Whether an environment variable holds a credential, by its name (case-insensitive)."""
    upper = env_name.upper()
    return upper in KNOWN_SECRETS or bool(_SECRET_NAME.search(upper))


def env_vars(env: Mapping[str, object]) -> None:
    """Env vars a launch exports: shell variable names, text values on one line (one ``export`` line
    of the script), and no credential (``is_secret``, any case: NeMo-Run upper-cases the name), whose
    value would be written into the script and the task's YAML: it is forwarded by name instead."""
    for key, value in env.items():
        where = f"env_vars.{key}"
        check_env_name(where, key)
        if is_secret(key):
            raise RecipeError(where, "looks like a secret; export it in your shell, it is forwarded by name")
        if not isinstance(value, str):
            raise RecipeError(where, f"expected text, got {type(value).__name__} {value!r}")
        one_line(where, value)


def count(field: str, value: object, low: int = 1) -> int:
    """An integer count of at least ``low`` (nodes, GPUs)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise RecipeError(field, f"must be an integer >= {low}, got {value!r}")
    return value


def slurm_options(label: Callable[[str], str], options: Mapping[str, Any]) -> None:
    """Refuse, naming the option (``label(argument)``: ``executor.account`` or ``--account``), the Slurm
    options that would change the rendered script or land in it unchecked: the account is in the job
    name and so in srun's unquoted ``--output``; a newline in an ``#SBATCH`` value starts a shell line
    in the header; the job directory is in an unquoted ``mkdir -p``."""
    o = options
    if not isinstance(o["account"], str) or not o["account"]:
        raise RecipeError(label("account"), f"Slurm needs an account, got {o['account']!r}")
    name(label("account"), o["account"])
    if o.get("partition") is not None:
        for part in str(o["partition"]).split(","):  # sbatch takes a list of partitions
            name(label("partition"), part)
    slurm_args.time_limit(o.get("time", "04:00:00"), label("time"))
    for arg, check in (
        ("dependency", slurm_args.dependency),
        ("qos", slurm_args.qos),
        ("array", slurm_args.array),
    ):
        if o.get(arg) is not None:
            check(o[arg], label(arg))
    slurm_args.max_restarts(o.get("max_restarts", 0), label("max_restarts"))
    if o.get("container_image") is not None:
        image(label("container_image"), o["container_image"])
    for m in o.get("container_mounts", ()):
        mount(label("container_mounts"), m)
    if o.get("bindpcie") is not None:
        absolute_path(label("bindpcie"), o["bindpcie"], strict=True)
    if o.get("gres_gpus_per_node") is not None:
        count(label("gres_gpus_per_node"), o["gres_gpus_per_node"])
    for arg in ("mpi", "ssh_host", "ssh_user"):
        if o.get(arg) is not None:
            name(label(arg), o[arg])
    if o.get("job_dir"):
        path(label("job_dir"), o["job_dir"])
    for key, value in (o.get("additional_parameters") or {}).items():
        sbatch_key(label("additional_parameters"), key)
        if value is not True:
            one_line(f"{label('additional_parameters')}.{key}", str(value))
