#!/usr/bin/env bash
# proxy_1gpu on the lent H200, on the English text of the TorchTitan comparison (.bench/: the corpus and
# tokenizer of ../shared/bench-text, preprocessed by `dsv3 preprocess`; benchmarks/README.md says how),
# one variant after the other in one device call, so that their ratios can be quoted. Each variant is
# "label|overrides" on top of proxy_1gpu; the first is the stock baseline (speedup_vs_stock).
#   source benchmarks/gpu_env.sh && VARIANTS=... bash benchmarks/proxy_h200_sweep.sh OUT_DIR
# Writes OUT_DIR/sweep.tgz (results/*.json, log excerpts) after every variant.
set -uo pipefail
OUT=${1:?usage: proxy_h200_sweep.sh OUT_DIR}
WORK=${WORK:-/tmp/h200_sweep}
STEPS=${STEPS:-12}
DATA=${DATA:-$PWD/.bench}
TEXT=(dataset.mock=False "dataset.data_paths=[\"$DATA/bench-text_text_document\"]"
  "dataset.data_cache_path=$WORK/cache" tokenizer.tokenizer_type=HuggingFaceTokenizer
  "tokenizer.tokenizer_model=$DATA/tokenizer" launch.gpu_type=h200)
GRAPHS='model.cuda_graph_impl=transformer_engine model.cuda_graph_scope=["attn","moe_router","moe_preprocess"] model.use_te_rng_tracker=True model.moe_token_dispatcher_type=alltoall'
# proxy_1gpu with launch.gpu_type=h200 is the H200 default (no recompute: the planner says MBS 8 fits;
# GC every 50 steps). The open question (benchmarks/README.md): TE CUDA graphs with MTP ran 1.16x in one
# call, without MTP 0.98x; measured again here beside the default and Bridge's GC interval of 5. Five
# variants of ~110 s fit one 600 s call; earlier rows are in results/h200_text*/.
DEFAULT_VARIANTS=(
  "stock|"
  "default|"
  "graphs|$GRAPHS"
  "default_again|"
  "graphs_again|$GRAPHS"
)
if [ -n "${VARIANTS:-}" ]; then IFS=';' read -r -a LIST <<<"$VARIANTS"; else LIST=("${DEFAULT_VARIANTS[@]}"); fi
# This call's rows only: a second call on the same machine found the first call's files in the tarball.
RUN=$WORK/run-$(date +%s)
mkdir -p "$RUN/results" "$OUT"
STOCK=""
for v in "${LIST[@]}"; do
  label=${v%%|*}; extra=${v#*|}
  recipe=proxy_1gpu; [ "$label" = stock ] && recipe=proxy_1gpu_stock
  compare=(); [ -n "$STOCK" ] && compare=(--compare-to "$STOCK")
  # shellcheck disable=SC2086  # extra holds several overrides
  timeout 300 python3 benchmarks/run_recipe.py "$recipe" --steps "$STEPS" --label "h200_text_$label" \
    --corpus bench-text --results-dir "$RUN/results" "${compare[@]}" "${TEXT[@]}" $extra 2>&1 \
    | tail -c 400 || echo "variant $label failed"
  [ "$label" = stock ] && STOCK=$(ls "$RUN"/results/*-h200_text_stock.json 2>/dev/null | head -1)
  tar czf "$OUT/sweep.tgz" -C "$RUN" results
done
