"""The container image each recipe runs in: one image per GPU platform, built from docker/Dockerfile.

A platform's build arguments are ``dsv3_recipes/platforms/<platform>.args`` (KEY=VALUE lines). They ship
inside the package so that ``docker/build.sh``, the tests and the launch side read the same pins. The
image tag carries the project version, so the image a job runs in holds the dsv3-recipes version of the
login node that launched it (a job runs the code in its image: rebuild after changing the code).

Launch side: standard library only.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata, resources
from importlib.resources.abc import Traversable

from dsv3_recipes.recipe.schema import RecipeError

REPOSITORY = "dsv3-recipes"  # the image repository is named after the project (its dist name)
REGISTRY_ENV = "DSV3_IMAGE_REGISTRY"
BINDPCIE_PATH = "/usr/local/bin/bindpcie"  # where docker/Dockerfile installs mlperf-common's bindpcie

# H200 runs the H100 image (same sm90 x86 build); every other GPU type has its own platform.
PLATFORM_FOR_GPU: dict[str, str] = {
    "h100": "h100",
    "h200": "h100",
    "b200": "b200",
    "gb200": "gb200",
    "gb300": "gb300",
}


def platforms() -> tuple[str, ...]:
    """The platforms that have an arg set, i.e. an image that can be built."""
    return tuple(
        sorted(f.name.removesuffix(".args") for f in _args_dir().iterdir() if f.name.endswith(".args"))
    )


def platform_args(platform: str) -> dict[str, str]:
    """The build arguments of one platform's image, as ``docker/build.sh`` passes them."""
    _require(platform)
    path = _args_dir() / f"{platform}.args"
    return parse_args(path.read_text(), source=path.name)


def parse_args(text: str, source: str = "<args>") -> dict[str, str]:
    """KEY=VALUE lines; blank lines and ``#`` comments are skipped. A malformed or repeated key fails."""
    args: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"{source}:{number}: expected KEY=VALUE, got {line!r}")
        if key in args:
            raise ValueError(f"{source}:{number}: {key} is set twice")
        args[key] = value
    return args


def image_name(platform: str, registry: str | None = None) -> str:
    """``[REGISTRY/]dsv3-recipes:<platform>-<project version>``.

    ``registry`` (else ``$DSV3_IMAGE_REGISTRY``) is used as written: ``registry.example.com/team`` for
    enroot >= 4.0, ``registry.example.com#team`` for older enroot. Without one the name is the local
    ``docker build`` tag, which a multi-node Slurm job cannot pull.
    """
    _require(platform)
    tag = f"{REPOSITORY}:{platform}-{metadata.version(REPOSITORY)}"
    registry = registry or os.environ.get(REGISTRY_ENV, "")
    if not registry:
        return tag
    return f"{registry}{'' if registry.endswith(('/', '#')) else '/'}{tag}"


def image_for(gpu_type: str, registry: str | None = None) -> str:
    """The default ``container_image`` for a recipe whose ``launch.gpu_type`` is ``gpu_type``."""
    try:
        platform = PLATFORM_FOR_GPU[gpu_type]
    except KeyError:
        raise RecipeError(
            "launch.gpu_type", f"no image for {gpu_type!r}; allowed: {', '.join(PLATFORM_FOR_GPU)}"
        ) from None
    return image_name(platform, registry)


def _require(platform: str) -> None:
    if platform not in platforms():
        raise ValueError(f"platform: no arg set for {platform!r}; allowed: {', '.join(platforms())}")


def _args_dir() -> Traversable:
    return resources.files("dsv3_recipes") / "platforms"


if __name__ == "__main__":  # docker/build.sh tags the image with exactly the name the executor uses
    print(image_name(sys.argv[1]))
