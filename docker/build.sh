#!/usr/bin/env bash
# Build one platform's image, tagged with the name the Slurm executor uses (dsv3_recipes.recipe.images):
#   docker/build.sh PLATFORM [--push] [--dry-run] [more `docker build` flags...]
# Run it with the project's Python on PATH (`uv run bash docker/build.sh gb200`), on a build host of the
# image's CPU architecture. With DSV3_IMAGE_REGISTRY set the tag names that registry; --push pushes it.
# --dry-run prints the docker commands instead of running them.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
platforms_dir=$root/dsv3_recipes/platforms
platform=${1:-}
if [[ -z $platform || ! -f $platforms_dir/$platform.args ]]; then
    allowed=$(cd "$platforms_dir" && for f in *.args; do printf '%s ' "${f%.args}"; done)
    echo "platform: got '$platform'; allowed: ${allowed% }" >&2
    exit 2
fi
shift

push=false
run=()
while [[ ${1:-} == --push || ${1:-} == --dry-run ]]; do
    if [[ $1 == --push ]]; then push=true; else run=(print_command); fi
    shift
done
print_command() { printf '%q ' "$@"; echo; }

image=$(python3 -m dsv3_recipes.recipe.images "$platform")
tag=${image/\#//} # enroot's REGISTRY#IMAGE is REGISTRY/IMAGE to docker

build_args=()
while IFS= read -r line; do
    [[ -z $line || $line == \#* ]] || build_args+=(--build-arg "$line")
done <"$platforms_dir/$platform.args"
arch=$(sed -n 's/^IMAGE_ARCH=//p' "$platforms_dir/$platform.args")

"${run[@]}" docker build --platform "linux/$arch" -f "$root/docker/Dockerfile" "${build_args[@]}" -t "$tag" "$@" "$root"
if $push; then
    "${run[@]}" docker push "$tag"
fi
