#!/usr/bin/env bash
# TorchTitan's offline assets for benchmarks/side_by_side.sh, in .tt/ of the project root (ignored by git),
# on the CPU machine, from the project root:
#     bash benchmarks/torchtitan/make_assets.sh TORCHTITAN_GIT_DIR
# TORCHTITAN_GIT_DIR: a git directory of github.com/pytorch/torchtitan holding commit f1a96b34. Runs
# ../shared/torchtitan/make_assets.sh (TorchTitan at that commit, the wheels the GPU image lacks, the bench
# text and tokenizer), then copies ../shared/torchtitan itself to .tt/harness: the GPU machine gets only the
# working tree and carried paths, so the harness (run.sh, its toml, plug-in, probe, summarizer) travels
# in .tt. Checks what run.sh checks, plus the harness. ~12 MB.
set -euo pipefail
GIT_DIR=${1:?usage: make_assets.sh TORCHTITAN_GIT_DIR}
SHARED=$(cd ../shared/torchtitan && pwd)
git --git-dir="$GIT_DIR" cat-file -e 'f1a96b34^{commit}' 2>/dev/null \
  || { echo "make_assets: $GIT_DIR does not hold TorchTitan commit f1a96b34" >&2; exit 1; }
bash "$SHARED/make_assets.sh" "$GIT_DIR"
mkdir -p .tt/harness
cp "$SHARED"/* .tt/harness/
chmod -R u+w .tt/harness
for f in .tt/torchtitan/torchtitan/train.py .tt/tokenizer/tokenizer.json .tt/data/c4_local/data.json \
  .tt/harness/run.sh .tt/harness/dsv3_proxy.toml .tt/harness/tt_dsv3_proxy.py; do
  [ -f "$f" ] || { echo "make_assets: $f missing" >&2; exit 1; }
done
ls .tt/whl/*.whl >/dev/null || { echo "make_assets: no wheels in .tt/whl" >&2; exit 1; }
du -sh .tt
