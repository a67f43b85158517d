#!/usr/bin/env bash
# Check out one commit of a repository (with its submodules) and prove HEAD is that commit.
# Usage: git_checkout.sh REPO_URL FULL_COMMIT_HASH DIR
set -euo pipefail
repo=$1 ref=$2 dir=$3
if [[ ! $ref =~ ^[0-9a-f]{40}$ ]]; then
    echo "git_checkout.sh: $ref is not a full commit hash (branches and tags move)" >&2
    exit 1
fi
git init -q "$dir"
git -C "$dir" fetch -q --depth 1 "$repo" "$ref"
git -C "$dir" checkout -q FETCH_HEAD
git -C "$dir" submodule update -q --init --recursive --depth 1
test "$(git -C "$dir" rev-parse HEAD)" = "$ref"
