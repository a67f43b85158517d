#!/usr/bin/env bash
# Proxy runs through benchmarks/run_recipe.py, on mock data or (`RECIPE:indexed`) on a Megatron indexed
# dataset that `dsv3 preprocess` makes from a generated C4-style corpus and tokenizer
# (dsv3_recipes.data.proxy_data). The default is issue 4's 2-GPU set.
#   source benchmarks/gpu_env.sh && bash benchmarks/proxy_runs.sh OUT_DIR
#   RUNS="proxy_1gpu:indexed" STEPS=15 bash benchmarks/proxy_runs.sh OUT_DIR
# Writes OUT_DIR/proxy_runs.tgz (results/*.json and log excerpts) after every run, so a run cut off by
# the machine's time limit still returns what finished.
set -uo pipefail  # a failed run_proxy.py, not the tail after it, decides "failed"
OUT=${1:?usage: proxy_runs.sh OUT_DIR}
RUNS=${RUNS:-proxy_2gpu_ep2 proxy_2gpu_pp2 proxy_2gpu_ep2:indexed}
STEPS=${STEPS:-8}
WORK=${WORK:-/tmp/proxy_runs}
DSV3=${DSV3:-python3 -m dsv3_recipes.cli}
DOCS=$WORK/data/c4-train_text_document  # what `dsv3 preprocess -o $WORK/data/c4-train` writes (.bin/.idx)
INDEXED=(dataset.mock=False "dataset.data_paths=[\"$DOCS\"]"
  "dataset.data_cache_path=$WORK/cache" tokenizer.tokenizer_type=HuggingFaceTokenizer
  "tokenizer.tokenizer_model=$WORK/corpus/tokenizer")
mkdir -p "$WORK/results" "$OUT"

bench() {
  timeout 300 python3 benchmarks/run_recipe.py "$@" --steps "$STEPS" --results-dir "$WORK/results" \
    | tail -c 600 || echo "run $* failed"
  tar czf "$OUT/proxy_runs.tgz" -C "$WORK" results
}

indexed_data() {
  python3 -m dsv3_recipes.data.proxy_data "$WORK/corpus"
  # shellcheck disable=SC2086  # DSV3 is a command with arguments
  $DSV3 preprocess -i "$WORK/corpus/raw/c4-train.*.json.gz" -o "$WORK/data/c4-train" \
    --tokenizer "$WORK/corpus/tokenizer" --workers 4 >"$WORK/results/preprocess.log" 2>&1
}

for run in $RUNS; do
  recipe=${run%:indexed}
  if [ "$run" = "$recipe" ]; then
    bench "$recipe"
  else
    [ -f "$DOCS.idx" ] || indexed_data
    bench "$recipe" --label "${recipe}_indexed" "${INDEXED[@]}"
  fi
done
