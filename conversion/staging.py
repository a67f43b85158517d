"""Write a conversion's output next to its destination and rename it into place only once every rank
has finished, so a crashed or killed conversion never leaves a directory that looks complete.

Standard library only; the caller passes its distributed barrier (a no-op for one process).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from conversion.checks import check_output_dir

PARTIAL_SUFFIX = ".partial"


def partial_path(final: Path) -> Path:
    return final.with_name(final.name + PARTIAL_SUFFIX)


@contextmanager
def staged_directory(
    final: str | Path, arg: str, *, is_writer: bool, barrier: Callable[[], None] = lambda: None
) -> Iterator[Path]:
    """Yield ``<final>.partial`` to write into; rename it to ``final`` after the body succeeds on all
    ranks. On failure the writer removes it; if a rank dies first, only the ``.partial`` name is left."""
    final = check_output_dir(final, arg)
    staging = partial_path(final)
    if is_writer:
        shutil.rmtree(staging, ignore_errors=True)  # a killed earlier attempt's leftovers
        staging.mkdir(parents=True)
    barrier()
    try:
        yield staging
        barrier()
        if is_writer:
            check_output_dir(final, arg)  # nothing appeared there while we converted
            if final.exists():
                final.rmdir()
            staging.rename(final)
    except BaseException:
        if is_writer:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    barrier()
