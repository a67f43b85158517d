#!/usr/bin/env bash
# Every 671B recipe shrunk to one GPU (`dsv3 pretrain NAME --shrink 1`), 10 steps each, all at once on
# the one GPU (so their times are not throughput figures: run_recipe.py records --concurrent), plus the
# train-side preflight asked for MXFP8 on a Hopper GPU (it must stop in one line, before any model).
#   source benchmarks/gpu_env.sh && bash benchmarks/shrunk_runs.sh OUT_DIR
# GPU_TYPE names the GPU at hand (default h200). Writes OUT_DIR/shrunk_runs.tgz: results/*.json, their
# log excerpts, failed logs, and preflight.log.
set -uo pipefail
OUT=${1:?usage: shrunk_runs.sh OUT_DIR}
HERE_GPU=${GPU_TYPE:-h200}
WORK=${WORK:-/tmp/shrunk_runs}
RECIPES="gb200_mxfp8_256gpu h100_fp8_blockwise bridge_default_1024gpu h100_bf16_512gpu b200_bf16_256gpu
  gb200_bf16_256gpu torchtitan_bf16 mlperf_gb300_256gpu mlperf_h100_1024gpu"
mkdir -p "$WORK/results" "$OUT"
unset GPU_TYPE  # seed 003's knob: only torchtitan_bf16 reads it, and it gets its own below
n=$(($(echo $RECIPES | wc -w) + 1))

for recipe in $RECIPES; do
  knob=(); [ "$recipe" = torchtitan_bf16 ] && knob=(env GPU_TYPE=h100)  # seed 003's H100 table
  "${knob[@]}" timeout 900 python3 benchmarks/run_recipe.py "$recipe" --shrink 1 --label "${recipe}_shrunk1" \
    --concurrent "$n" --results-dir "$WORK/results" "launch.gpu_type=$HERE_GPU" >"$WORK/$recipe.out" 2>&1 &
done
# The recipe's own GPU type (gb200) keeps MXFP8: only the node can tell that its GPU cannot run it.
( timeout 600 python3 -m dsv3_recipes.cli pretrain -f gb200_mxfp8_256gpu --shrink 1 \
    output_dir="$WORK/preflight" >"$WORK/preflight.log" 2>&1; echo "exit code: $?" >>"$WORK/preflight.log" ) &
wait
for recipe in $RECIPES; do tail -n 1 "$WORK/$recipe.out" | cut -c1-300; done
grep -h "dsv3: error\|exit code" "$WORK/preflight.log" | sort | uniq -c
cp "$WORK/preflight.log" "$WORK/results/"
tar czf "$OUT/shrunk_runs.tgz" -C "$WORK" results
