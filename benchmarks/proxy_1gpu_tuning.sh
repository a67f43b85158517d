#!/usr/bin/env bash
# The 1-GPU proxy's tuning sweep (issue 4): Bridge's stock settings, then one change at a time, each run
# through `dsv3 pretrain` for $STEPS steps (GBS 8 throughout, so every variant trains the same tokens).
#   source benchmarks/gpu_env.sh && bash benchmarks/proxy_1gpu_tuning.sh OUT_DIR [variant...]
# Writes OUT_DIR/sweep.tgz after every variant (results/*.json, excerpts, full logs): a run cut off by
# the machine's time limit still returns what finished.
set -u
OUT=${1:?usage: proxy_1gpu_tuning.sh OUT_DIR [variant...]}
shift
STEPS=${STEPS:-8}
WORK=${WORK:-/tmp/sweep}
# One GPU: nothing to overlap the shared expert with; Megatron's fused MLA RoPE kernels. (TE's fused
# router is not here: it asserts topk % group_topk == 0, and the proxy routes top-6 of 4 groups.)
FUSIONS="model.moe_shared_expert_overlap=False model.apply_rope_fusion=True"
RECOMPUTE="model.recompute_granularity=selective model.recompute_modules=['moe_act','layernorm','mla_up_proj']"
GRAPHS="model.cuda_graph_impl=transformer_engine model.cuda_graph_scope=['attn','moe_router','moe_preprocess'] model.use_te_rng_tracker=True"
declare -A VARIANT=(
  [stock]=""
  [fused_attn]="model.attention_backend=fused"
  [fusions]="$FUSIONS"
  [mbs2]="$FUSIONS train.micro_batch_size=2"
  [mbs4_rc]="$FUSIONS train.micro_batch_size=4 $RECOMPUTE"
  [mbs8_rc]="$FUSIONS train.micro_batch_size=8 $RECOMPUTE"
  [allgather]="$FUSIONS model.moe_token_dispatcher_type=allgather"
  [graphs]="$FUSIONS $GRAPHS"
  [nochecks]="$FUSIONS train.check_for_nan_in_loss_and_grad=False train.manual_gc_interval=100"
)
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(stock fused_attn fusions mbs2 mbs4_rc mbs8_rc allgather graphs nochecks)
mkdir -p "$WORK/results" "$WORK/full" "$OUT"
for v in "${variants[@]}"; do
  # shellcheck disable=SC2086  # the overrides are separate words
  python3 benchmarks/run_recipe.py proxy_1gpu_stock --steps "$STEPS" --label "tune-$v" \
    --results-dir "$WORK/results" --full-log "$WORK/full/tune-$v.log" ${VARIANT[$v]} ${EXTRA:-} \
    || echo "variant $v failed"
  tar czf "$OUT/sweep.tgz" -C "$WORK" .
done
