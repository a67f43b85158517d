#!/usr/bin/env bash
# The 1-GPU proxy's tuning sweep (issue 4): stock Bridge settings, then one change at a time, each
# run through `dsv3 pretrain` for $STEPS steps. Results: $RESULTS/*.json + *.log (see run_proxy.py).
# Usage (GPU machine, after `source benchmarks/gpu_env.sh`): bash benchmarks/proxy_1gpu_tuning.sh [variant...]
set -u
STEPS=${STEPS:-12}
RESULTS=${RESULTS:-benchmarks/results}
FUSIONS="model.moe_router_fusion=True model.apply_rope_fusion=True train.enable_experimental=True model.moe_shared_expert_overlap=False"
GRAPHS="model.cuda_graph_impl=transformer_engine model.cuda_graph_scope=['attn','moe_router','moe_preprocess'] model.use_te_rng_tracker=True"
declare -A VARIANT=(
  [stock]=""
  [fusions]="$FUSIONS"
  [graphs]="$FUSIONS $GRAPHS"
  [mbs2]="$FUSIONS train.micro_batch_size=2"
  [mbs2_rc]="$FUSIONS train.micro_batch_size=2 model.recompute_granularity=selective model.recompute_modules=['moe_act']"
  [mbs4_rc]="$FUSIONS train.micro_batch_size=4 train.global_batch_size=16 model.recompute_granularity=selective model.recompute_modules=['moe_act','layernorm','mla_up_proj']"
  [allgather]="$FUSIONS model.moe_token_dispatcher_type=allgather"
)
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(stock fusions graphs mbs2 mbs2_rc mbs4_rc allgather)
for v in "${variants[@]}"; do
  # shellcheck disable=SC2086  # the overrides are separate words
  python3 benchmarks/run_proxy.py proxy_1gpu_stock --steps "$STEPS" --label "tune-$v" \
    --results-dir "$RESULTS" ${VARIANT[$v]} || echo "variant $v failed"
done
