#!/usr/bin/env bash
# The MLPerf DSV3 code path on one GPU, end to end: a generated C4-style corpus and word-level
# tokenizer -> `dsv3 preprocess` -> `dsv3 pretrain -f mlperf_proxy_1gpu` on that data (torchrun, the
# MLPerf callbacks, evaluation every step from step 4 on the first 32 validation sequences, stop at
# validation loss <= 3.60) -> the mllog file -> mlperf-logging's compliance checker (ruleset 6.1.0,
# proxy overrides for the scale rules).
#
#     bash experiments/mlperf/proxy_gpu.sh OUT_DIR
#
# Needs the train stack, NeMo-Run and mlperf-logging importable (on the lent GPU machine:
# `source benchmarks/gpu_env.sh` plus the mlperf-logging wheel). Writes to OUT_DIR: mlperf_log.txt
# (the mllog result), train.log, compliance.txt. Exits non-zero if training or the check fails.
set -euo pipefail
OUT=$(realpath -m "${1:?usage: proxy_gpu.sh OUT_DIR}")
WORK=${WORK:-/tmp/dsv3-mlperf-proxy}
DSV3=${DSV3:-python3 -m dsv3_recipes.cli}
rm -rf "$WORK"
mkdir -p "$WORK" "$OUT"

python3 -m dsv3_recipes.data.proxy_data "$WORK"
# shellcheck disable=SC2086  # DSV3 is a command with arguments
$DSV3 preprocess -i "$WORK/raw/c4-train.*.json.gz" -o "$WORK/data/c4-train.en_0" \
  --tokenizer "$WORK/tokenizer" --workers 4
# shellcheck disable=SC2086
$DSV3 preprocess -i "$WORK/raw/c4-validation-91205-samples.en.json.gz" \
  -o "$WORK/data/c4-validation-91205-samples.en" --tokenizer "$WORK/tokenizer" --workers 4

overrides=(
  dataset.mock=False
  "dataset.data_paths=[\"$WORK/data/c4-train.en_0_text_document\"]"
  "dataset.validation_paths=[\"$WORK/data/c4-validation-91205-samples.en_text_document\"]"
  "dataset.data_cache_path=$WORK/cache"
  tokenizer.tokenizer_type=HuggingFaceTokenizer
  "tokenizer.tokenizer_model=$WORK/tokenizer"
  "output_dir=$WORK/run"
  "mlperf.log_file=$OUT/mlperf_log.txt"
  mlperf.config_filename=proxy_gpu.sh
)
# shellcheck disable=SC2086
$DSV3 pretrain --factory mlperf_proxy_1gpu "${overrides[@]}" 2>&1 | tee "$OUT/train.log"
grep -q '"key": "run_stop".*"status": "success"' "$OUT/mlperf_log.txt" \
  || { echo "proxy_gpu: the run did not reach its target (run_stop is not success)"; exit 1; }
# shellcheck disable=SC2086
$DSV3 mlperf-check "$OUT/mlperf_log.txt" --recipe mlperf_proxy_1gpu \
  "${overrides[@]}" 2>&1 | tee "$OUT/compliance.txt"
