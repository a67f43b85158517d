#!/usr/bin/env bash
# The step-time model's checks on one GPU (issue 26): proxy_1gpu with and without MTP on the English text
# of the TorchTitan comparison, and two 671B recipes shrunk to this GPU, one after the other, each alone
# on the GPU. Their measured step times are what `dsv3 plan` must predict within 10%. The proxies route
# forced balanced, as the planner assumes (on this text their natural router collapses onto one expert).
#   source benchmarks/gpu_env.sh && bash benchmarks/planner_checks.sh OUT_DIR [LABEL ...]
# LABELs pick runs (proxy_mtp proxy_nomtp h100_fp8_blockwise_shrunk1 bridge_default_1024gpu_shrunk1; all
# by default), so that the four can be split over device calls of one held machine.
# STEPS (20 by default) for the proxies: ten-step checks left four steps for the median, and on one
# machine the same host-bound check then measured 0.278 s and 0.377 s (2026-12-06, H100); the runs are
# mostly start-up. A shrunk run takes the shrink's 10 steps (run_recipe.py refuses --steps with --shrink).
# PROFILE=1 records the second-last step with Bridge's PyTorch profiler (the last three leave the median);
# run_recipe.py writes the step's kernel profile beside the result (results/DATE-GPU-LABEL.profile.json), so
# that the time the planner misses is placed in the same run.
# GPU_TYPE (h200 by default, the calibrated GPU) is the launch.gpu_type the runs and their plans name: an
# H100 run checks the planner's scaling from H200 measurements instead.
# Writes OUT_DIR/planner_checks.tgz (results/*.json and log excerpts) after every run.
set -uo pipefail
OUT=${1:?usage: planner_checks.sh OUT_DIR [LABEL ...]}
shift
ONLY=" $* "
WORK=${WORK:-/tmp/planner_checks}
DATA=${DATA:-$PWD/.bench}
TEXT=(dataset.mock=False "dataset.data_paths=[\"$DATA/bench-text_text_document\"]"
  "dataset.data_cache_path=$WORK/cache" tokenizer.tokenizer_type=HuggingFaceTokenizer
  "tokenizer.tokenizer_model=$DATA/tokenizer")
RUN=$WORK/run-$(date +%s)
mkdir -p "$RUN/results" "$OUT"
BALANCED=model.moe_router_force_load_balancing=True
GPU="launch.gpu_type=${GPU_TYPE:-h200}"
STEPS=${STEPS:-20}
SHRUNK_STEPS=10  # the shrink's
run() {  # label, the run's steps, then run_recipe.py arguments
  local label=$1 steps=$2; shift 2
  [ "$ONLY" = "  " ] || [[ "$ONLY" == *" $label "* ]] || return 0
  local profiling=() limit=200
  if [ "${PROFILE:-0}" = 1 ]; then  # and then the trace's kernel profile
    profiling=(profiling.use_pytorch_profiler=True "profiling.profile_step_start=$((steps - 1))"
      "profiling.profile_step_end=$steps")
    limit=320
  fi
  timeout "$limit" python3 benchmarks/run_recipe.py "$@" "${profiling[@]}" --label "$label" --results-dir "$RUN/results" \
    --timeout 185 2>&1 | tail -c 300 || echo "run $label failed"
  tar czf "$OUT/planner_checks.tgz" -C "$RUN" results
}
run proxy_mtp "$STEPS" proxy_1gpu --steps "$STEPS" --corpus bench-text "$GPU" $BALANCED "${TEXT[@]}"
run proxy_nomtp "$STEPS" proxy_1gpu --steps "$STEPS" --corpus bench-text "$GPU" model.mtp_num_layers=None \
  $BALANCED "${TEXT[@]}"
run h100_fp8_blockwise_shrunk1 "$SHRUNK_STEPS" h100_fp8_blockwise --shrink 1 "$GPU"
run bridge_default_1024gpu_shrunk1 "$SHRUNK_STEPS" bridge_default_1024gpu --shrink 1 "$GPU" $BALANCED
