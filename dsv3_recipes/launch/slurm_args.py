"""Slurm's own formats for the job options a long run on a shared cluster needs: a time limit, a
dependency on other jobs, a QOS, an array of tasks. Each is checked against the grammar sbatch accepts,
so a typo (``--time 4h``) is refused on the login node in one line that names the option, instead of
being rendered as given and refused (or misread) by sbatch later.

Standard library only.
"""

from __future__ import annotations

import re

from dsv3_recipes.recipe.schema import RecipeError

# sbatch(1) --time: "minutes", "minutes:seconds", "hours:minutes:seconds", "days-hours",
# "days-hours:minutes" and "days-hours:minutes:seconds".
TIME_FORMATS = ("MM", "MM:SS", "HH:MM:SS", "D-HH", "D-HH:MM", "D-HH:MM:SS")
_TIME = re.compile(r"\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}")
# sbatch(1) --dependency: type:job_id[:job_id...] (after and afterany... take job_id[+minutes]),
# joined by "," (all must hold) or "?" (any may), or "singleton".
DEPENDENCY_TYPES = ("after", "afterany", "afterburstbuffer", "aftercorr", "afternotok", "afterok")
_JOB = r"\d+(_\d+)?(\+\d+)?"
_ONE_DEPENDENCY = rf"({'|'.join(DEPENDENCY_TYPES)})(:{_JOB})+|singleton"
_DEPENDENCY = re.compile(rf"({_ONE_DEPENDENCY})((,({_ONE_DEPENDENCY}))*|(\?({_ONE_DEPENDENCY}))*)")
# sacctmgr's QOS names: letters, digits and a few marks, as account names.
_QOS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# sbatch(1) --array: indexes and ranges with an optional step, comma-separated, then "%N" at most N at once.
_ARRAY = re.compile(r"\d+(-\d+(:\d+)?)?(,\d+(-\d+(:\d+)?)?)*(%\d+)?")


def time_limit(text: str, option: str) -> str:
    """A time limit in one of sbatch's formats, above zero, returned as given."""
    if not isinstance(text, str) or not _TIME.fullmatch(text):
        raise RecipeError(option, f"{text!r} is not a Slurm time limit; use one of {', '.join(TIME_FORMATS)}")
    if not any(c in "123456789" for c in text):
        raise RecipeError(option, f"{text!r}: a job needs a time limit above zero")
    return text


def dependency(text: str, option: str) -> str:
    """A dependency in sbatch's syntax, e.g. ``afterok:123:124`` or ``afterany:12,afterok:13``."""
    if not _DEPENDENCY.fullmatch(text):
        raise RecipeError(
            option,
            f"{text!r} is not a Slurm dependency; use TYPE:JOBID[:JOBID...] (TYPE one of "
            f"{', '.join(DEPENDENCY_TYPES)}), joined by ',' (all) or '?' (any), or singleton",
        )
    return text


def qos(text: str, option: str) -> str:
    if not _QOS.fullmatch(text):
        raise RecipeError(option, f"{text!r} is not a QOS name (letters, digits, '_', '.', '-')")
    return text


def array(text: str, option: str) -> str:
    """A job array's index spec, e.g. ``0-2``, ``1,3,5``, ``0-15:4`` or ``0-99%10``."""
    if not _ARRAY.fullmatch(text):
        raise RecipeError(
            option, f"{text!r} is not a Slurm array spec; use e.g. 0-2, 1,3,5, 0-15:4 or 0-99%10"
        )
    for part in text.split("%")[0].split(","):
        first, _, rest = part.partition("-")
        if rest and int(rest.split(":")[0]) < int(first):
            raise RecipeError(option, f"{text!r}: the range {part} ends before it starts")
    return text


def max_restarts(value: int, option: str) -> int:
    if value < 0:
        raise RecipeError(option, f"must be >= 0, got {value}")
    return value
