"""A Slurm job refuses to start when its image holds other dsv3-recipes code than the launcher's.

The job runs the code installed in its container image (docker/Dockerfile installs the project), while
the login node planned and checked the recipe with its own copy. The two drift as soon as either is
edited, and the job would then silently run code nobody planned. So the Slurm executor exports the
launcher's fingerprint (every ``.py`` and ``platforms/*.args`` file of ``dsv3_recipes`` and
``conversion``) as ``$DSV3_LAUNCHER_CODE``, and every task (pretrain, preprocess, the conversions) calls
``check()`` first: a mismatch fails the job in one line, before any GPU work. (NeMo-Run 0.11.1 writes
the packager's config but never passes it to the job, so ``Packager.setup()`` cannot do this.)

Why not ship the code with NeMo-Run's ``GitArchivePackager``, as Megatron-Bridge's perf scripts do?
It ships committed files only, so uncommitted edits would still plan on the login node and not run in
the job; it needs a git checkout where a ``pip install dsv3-recipes`` has none; and the image pins the
Bridge/TE versions this code was written against. The image is the unit of deployment here.

Standard library only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
from importlib import metadata
from pathlib import Path

ENV = "DSV3_LAUNCHER_CODE"
PACKAGES = ("dsv3_recipes", "conversion")


def fingerprint(roots: tuple[Path, ...] | None = None) -> str:
    """A hash of the code a job runs: the name and bytes of every module and image arg set."""
    if roots is None:
        roots = tuple(Path(importlib.util.find_spec(p).submodule_search_locations[0]) for p in PACKAGES)
    digest = hashlib.sha256()
    for root in roots:
        for f in sorted(root.rglob("*")):
            if f.suffix in (".py", ".args") and "__pycache__" not in f.parts:
                digest.update(f"{root.name}/{f.relative_to(root)}\0".encode())
                digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def launcher_env() -> dict[str, str]:
    """What the Slurm executor exports so that the job can compare."""
    return {ENV: f"{metadata.version('dsv3-recipes')}:{fingerprint()}"}


def check() -> None:
    """In the job: refuse to run other code than the launcher's (no-op when it did not say)."""
    expected = os.environ.get(ENV)
    if not expected:
        return
    found = launcher_env()[ENV]
    if found != expected:
        raise RuntimeError(
            f"dsv3-recipes in this image on {socket.gethostname()} ({found}) is not the launcher's "
            f"({expected}): rebuild and push the image from the launcher's code (docker/README.md), "
            "or launch from the code the image holds"
        )
