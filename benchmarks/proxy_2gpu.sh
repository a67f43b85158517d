#!/usr/bin/env bash
# The 2-GPU proxies (issue 4): EP=2 and PP=2 on mock data, then EP=2 on a Megatron indexed dataset that
# `dsv3 preprocess` makes from a generated C4-style corpus and tokenizer (dsv3_recipes.proxy_data).
#   source benchmarks/gpu_env.sh && bash benchmarks/proxy_2gpu.sh OUT_DIR
#   CASES=ep2_indexed bash benchmarks/proxy_2gpu.sh OUT_DIR     # one case only
# Writes OUT_DIR/proxy_2gpu.tgz (results/*.json and log excerpts) after every run, so a run cut off by
# the machine's time limit still returns what finished.
set -uo pipefail  # a failed run_proxy.py, not the tail after it, decides "failed"
OUT=${1:?usage: proxy_2gpu.sh OUT_DIR}
CASES=${CASES:-ep2 pp2 ep2_indexed}
STEPS=${STEPS:-8}
WORK=${WORK:-/tmp/proxy_2gpu}
DSV3=${DSV3:-python3 -m dsv3_recipes.cli}
mkdir -p "$WORK/results" "$OUT"

bench() {
  timeout 240 python3 benchmarks/run_proxy.py "$@" --steps "$STEPS" --results-dir "$WORK/results" \
    | tail -c 600 || echo "run $* failed"
  tar czf "$OUT/proxy_2gpu.tgz" -C "$WORK" results
}

indexed_data() {
  python3 -m dsv3_recipes.proxy_data "$WORK/corpus"
  # shellcheck disable=SC2086  # DSV3 is a command with arguments
  $DSV3 preprocess -i "$WORK/corpus/raw/c4-train.*.json.gz" -o "$WORK/data/c4-train" \
    --tokenizer "$WORK/corpus/tokenizer" --workers 4 >"$WORK/results/preprocess.log" 2>&1
}

for case in $CASES; do
  case $case in
    ep2 | pp2) bench "proxy_2gpu_$case" ;;
    ep2_indexed)
      indexed_data
      bench proxy_2gpu_ep2 --label proxy_2gpu_ep2_indexed dataset.mock=False \
        "dataset.data_paths=[\"$WORK/data/c4-train_text_document\"]" "dataset.data_cache_path=$WORK/cache" \
        tokenizer.tokenizer_type=HuggingFaceTokenizer "tokenizer.tokenizer_model=$WORK/corpus/tokenizer" ;;
    *) echo "unknown case $case (ep2, pp2, ep2_indexed)" >&2; exit 2 ;;
  esac
done
