"""Last step of docker/Dockerfile: stop the build if a package recorded from the base image (torch)
changed, or a package of the training stack is not at its uv.lock version.

Standard library only: it runs inside the image being built."""

from __future__ import annotations

import argparse
import sys
import tomllib
from importlib import metadata
from pathlib import Path


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def problems(base_versions: str, lock_text: str, locked_packages: list[str]) -> list[str]:
    """One line per mismatch; empty when the image is what the base image and the lock promise.

    ``base_versions``: ``NAME==VERSION`` lines recorded before anything was installed.
    """
    found = []
    for line in base_versions.split():
        name, _, version = line.partition("==")
        if installed_version(name) != version:
            found.append(f"{name}: {installed_version(name)} is installed, the base image had {version}")
    locked = {p["name"]: p["version"] for p in tomllib.loads(lock_text)["package"]}
    for name in locked_packages:
        if name not in locked:
            found.append(f"{name}: not in uv.lock")
        elif installed_version(name) != locked[name]:
            found.append(f"{name}: {installed_version(name)} is installed, uv.lock pins {locked[name]}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--base-versions", type=Path, required=True, help="NAME==VERSION lines of the base image"
    )
    parser.add_argument("--lock", type=Path, required=True, help="the project's uv.lock")
    parser.add_argument("packages", nargs="+", help="packages that must be at their uv.lock version")
    args = parser.parse_args(argv)
    found = problems(args.base_versions.read_text(), args.lock.read_text(), args.packages)
    for line in found:
        print(f"check_image: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
