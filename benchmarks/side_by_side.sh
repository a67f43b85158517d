#!/usr/bin/env bash
# TorchTitan and proxy_1gpu one after the other on the one GPU, each with one steady step profiled, and the
# table of where each one's step goes (issue 30). On the lent GPU machine, carrying .gpu, .bench and .tt:
#   source benchmarks/gpu_env.sh && bash benchmarks/side_by_side.sh OUT_DIR
# .tt: bash benchmarks/torchtitan/make_assets.sh GIT_DIR on the CPU machine (TorchTitan f1a96b34, its wheels,
# the bench text and tokenizer, and .tt/harness: ../shared/torchtitan, which the GPU machine lacks).
#
# RUNS: "label|overrides" separated by ';'. A label that starts with "torchtitan" runs TorchTitan (overrides:
# more of its own arguments, e.g. "torchtitan_balanced|--training.debug_moe_force_load_balance", its
# round-robin routing, beside a proxy run with model.moe_router_force_load_balancing=True); any other runs `benchmarks/run_recipe.py proxy_1gpu launch.gpu_type=$GPU_TYPE` on the bench
# text with those overrides. The default: TorchTitan, the proxy without MTP (TorchTitan's model), the proxy
# as shipped (MTP). Candidate changes go in the same list, so each is measured beside the default, e.g.
#   RUNS="nomtp|model.mtp_num_layers=None;nomtp_graphs|model.mtp_num_layers=None $GRAPHS"
# with GRAPHS as in benchmarks/proxy_h200_sweep.sh; benchmarks/README.md ("Side by side") lists more.
# A label that starts with "warmup" is a proxy run of WARMUP_STEPS (8) steps whose result stays out of the
# tables and the count: in three of four calls the first proxy run ran 6-13% slower than the same run
# later, over all its steps, with kernel caches warm too (2026-12-07, benchmarks/README.md "One bucket on
# one GPU"), so a call that compares proxy runs starts with one:
#   RUNS="warmup|model.mtp_num_layers=None;..."
# Knobs: COMMIT (the checkout's commit, for the record: the GPU copy's .git, if any, is stale)
# STEPS=20 PROFILE_STEP=18 (the proxy's profiled step; TorchTitan's is its last, STEPS) PROFILE=1
# BUDGET=540 (s, whole script); LBS/GBS reach TorchTitan's run.sh (its batch, e.g. LBS=4 GBS=8 beside
# train.micro_batch_size=4 on an 80 GB GPU). Each run is time-boxed to what is left. Results land in OUT_DIR
# as they come: side_by_side.md (the tables), results.tgz (result JSONs, logs, kernel profiles),
# trace-<label>.json.gz (each profiled trace that fits the device tool's 16 MiB), progress.log.
set -uo pipefail
OUT=${1:?usage: side_by_side.sh OUT_DIR}
STEPS=${STEPS:-20}
WARMUP_STEPS=${WARMUP_STEPS:-8}
PROFILE=${PROFILE:-1}
PROFILE_STEP=${PROFILE_STEP:-18}
BUDGET=${BUDGET:-540}
# The proxy's GPU-dependent defaults: h200's (the issue's) unless GPU_TYPE names another. proxy_1gpu's
# are the same on every GPU the project knows now (no recompute: its step fits 80 GB; recipes/proxy.py).
GPU_TYPE=${GPU_TYPE:-h200}
WORK=${WORK:-/tmp/side_by_side}
DATA=${DATA:-$PWD/.bench}
DEFAULT_RUNS="torchtitan|;nomtp|model.mtp_num_layers=None;mtp|"
IFS=';' read -r -a LIST <<<"${RUNS:-$DEFAULT_RUNS}"
RUN=$WORK/run-$(date +%s)
mkdir -p "$OUT" "$RUN/results" "$RUN/profiles" "$RUN/logs" "$RUN/warmup"
LOG=$OUT/progress.log
: >"$LOG"
say() { echo "[side_by_side t=${SECONDS}s] $*" | tee -a "$LOG"; }
left() { echo $((BUDGET - SECONDS)); }
MAX_TRACE=$((15 * 1024 * 1024))

TEXT=(dataset.mock=False "dataset.data_paths=[\"$DATA/bench-text_text_document\"]"
  "dataset.data_cache_path=$WORK/cache" tokenizer.tokenizer_type=HuggingFaceTokenizer
  "tokenizer.tokenizer_model=$DATA/tokenizer" "launch.gpu_type=$GPU_TYPE")
PROFILING=()
# Bridge's profiler: warm-up in step PROFILE_STEP-1, records PROFILE_STEP, writes the trace during the next;
# run_recipe leaves those three steps out of tokens/s (metrics.profiled_steps).
[ "$PROFILE" = 1 ] && PROFILING=(profiling.use_pytorch_profiler=True "profiling.profile_step_start=$PROFILE_STEP"
  "profiling.profile_step_end=$((PROFILE_STEP + 1))")
ENTRIES=()
WARMUPS=0

reap() {  # a run cut by its timeout can leave workers on the GPU: end them (this call started them), by id
  local pids
  pids=$(nvidia-smi --query-compute-apps=pid --format=csv,noheader 2>/dev/null | tr -d ' ')
  [ -z "$pids" ] && return 0
  say "processes still on the GPU after $1: $(echo $pids) -- ending them"
  for pid in $pids; do kill -TERM "$pid" 2>/dev/null; done
  sleep 5
  for pid in $pids; do kill -KILL "$pid" 2>/dev/null; done
}

bundle() {  # everything so far into OUT_DIR (the device tool brings back at most 8 files of <= 16 MiB)
  tar czf "$OUT/results.tgz" -C "$RUN" results profiles logs warmup 2>>"$LOG"
  [ -f "$RUN/side_by_side.md" ] && cp "$RUN/side_by_side.md" "$OUT/"
}

keep_trace() {  # $1 label, $2 trace: compressed into OUT_DIR if it fits, else only its profile is kept
  local label=$1 trace=$2 dest="$OUT/trace-$1.json.gz"
  case "$trace" in *.gz) cp "$trace" "$dest" ;; *) gzip -c "$trace" >"$dest" ;; esac
  if [ "$(stat -c %s "$dest")" -gt "$MAX_TRACE" ]; then
    say "trace of $label is $(du -h "$dest" | cut -f1) compressed: over the device tool's limit, not kept"
    rm -f "$dest"
  fi
}

profile() {  # $1 label, $2 trace, rest: kernel_profile options (TorchTitan's; run_recipe.py profiles the proxy)
  local label=$1 trace=$2; shift 2
  local t=$(( $(left) - 20 )); [ "$t" -gt 120 ] && t=120
  if [ -z "$trace" ] || [ ! -f "$trace" ]; then say "$label: no profiler trace"; return 1; fi
  if [ "$t" -lt 15 ]; then say "$label: no time left to read its trace"; return 1; fi
  timeout "$t" python3 -m dsv3_recipes.report.kernel_profile "$trace" "$@" --json "$RUN/profiles/$label.json" \
    >"$RUN/logs/$label.profile.txt" 2>&1 || { say "$label: kernel_profile failed: $(tail -1 "$RUN/logs/$label.profile.txt")"; return 1; }
  keep_trace "$label" "$trace"
}

torchtitan() {  # $1 label, $2 extra TorchTitan arguments
  local label=$1 t=$(( $(left) - 40 )); [ "$t" -gt 240 ] && t=240
  if [ ! -f .tt/harness/run.sh ]; then say "$label: .tt/harness missing (benchmarks/torchtitan/make_assets.sh)"; return 1; fi
  if [ "$t" -lt 120 ]; then say "$label: ${t}s left, not started"; return 1; fi
  local traces=$RUN/tt_traces_$label extra="--experimental.custom_import tt_expert_load $2" dir=$RUN/$label
  [ "$PROFILE" = 1 ] && extra="$extra --profiling.enable_profiling --profiling.save_traces_folder $traces --profiling.profile_freq $STEPS"
  # LBS/GBS (run.sh's batch, exported to match a proxy run's micro-batches on a smaller GPU) are recorded.
  local cmd="${LBS:+LBS=$LBS }${GBS:+GBS=$GBS }STEPS=$STEPS BUDGET=$t TT_EXTRA='$extra' bash .tt/harness/run.sh $dir"
  say "$label: $cmd"
  # Its own PYTHONPATH (run.sh puts its wheels and TorchTitan first), plus the expert-load plug-in.
  timeout -k 10 $((t + 15)) env PYTHONPATH="$PWD/benchmarks/torchtitan" STEPS="$STEPS" BUDGET="$t" TT_EXTRA="$extra" \
    bash .tt/harness/run.sh "$dir" >"$RUN/logs/$label.console" 2>&1
  say "$label: exit $? ($(tail -1 "$dir/torchtitan_summary.txt" 2>/dev/null | cut -c1-160))"
  cp "$dir/torchtitan.log" "$RUN/logs/$label.log" 2>/dev/null
  # Profiler warm-up (3 steps) and the traced step: STEPS-3..STEPS; the trace is written after the last step.
  local out=$RUN/results/$label.json left_out=""
  [ "$PROFILE" = 1 ] && left_out="$((STEPS - 3))-$STEPS"
  python3 benchmarks/side_by_side.py torchtitan "$dir/torchtitan.log" --out "$out" --label "$label" \
    --command "$cmd" --left-out "$left_out" 2>&1 | tee -a "$LOG" | tail -1 || return 1
  [ -f "$out" ] || return 1
  local entry="$label=$out"
  if [ "$PROFILE" = 1 ] && profile "$label" "$traces/iteration_$STEPS/rank0_trace.json" \
      --step-offset 1 --experts 64 --eager-gemms-are-output; then
    entry="$entry,$RUN/profiles/$label.json"
  fi
  ENTRIES+=("$entry")
}

field() {  # $1 result JSON, $2 key: its value, empty for none
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get(sys.argv[2]) or "")' "$1" "$2"
}

run_proxy() {  # $1 label, $2 steps, $3 results dir, $4 timeout s, $5 grace s, $6 overrides, rest: more arguments
  local label=$1 steps=$2 results=$3 t=$4 grace=$5 extra=$6; shift 6
  # shellcheck disable=SC2086  # extra holds several overrides
  timeout -k 10 $((t + grace)) python3 benchmarks/run_recipe.py proxy_1gpu --steps "$steps" --label "$label" \
    --corpus bench-text --results-dir "$results" --timeout "$t" --full-log "$RUN/logs/$label.full.log" \
    "${TEXT[@]}" "$@" "output_dir=$RUN/out/$label" $extra >"$RUN/logs/$label.console" 2>&1
}

proxy() {  # $1 label, $2 overrides
  local grace=15; [ "$PROFILE" = 1 ] && grace=135  # after training, run_recipe.py reads the trace (<= 120 s)
  local label=$1 extra=$2 t=$(( $(left) - 25 - grace )); [ "$t" -gt 240 ] && t=240
  local run_dir=$RUN/out/$label  # run_proxy's output_dir: its result names its trace relative to it
  if [ "$t" -lt 120 ]; then say "$label: ${t}s left, not started"; return 1; fi
  say "$label: run_recipe.py proxy_1gpu $extra (timeout ${t}s)"
  run_proxy "$label" "$STEPS" "$RUN/results" "$t" "$grace" "$extra" "${PROFILING[@]}"
  local rc=$?
  local result
  result=$(ls "$RUN"/results/*-"$label".json 2>/dev/null | head -1)
  if [ "$rc" != 0 ] || [ -z "$result" ]; then
    say "$label: FAILED (exit $rc): $(grep -m1 -E 'Error|error:' "$RUN/logs/$label.console" | cut -c1-200)"
    gzip -f "$RUN/logs/$label.full.log" 2>/dev/null
    return 1
  fi
  say "$label: $(python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print("{:,.0f} tokens/s, Megatron {:.1f} TFLOPS".format(r["tokens_per_s_per_gpu"], r.get("megatron_tflops_per_gpu") or 0))' "$result")"
  rm -f "$RUN/logs/$label.full.log"  # the result's .log excerpt and the console keep what matters
  local entry="$label=$result" kernels why
  if [ "$PROFILE" = 1 ]; then  # run_recipe.py wrote the traced step's kernel profile beside the result
    kernels=$(field "$result" kernel_profile)
    if [ -n "$kernels" ]; then
      entry="$entry,$(dirname "$result")/$kernels"
      keep_trace "$label" "$run_dir/$(field "$result" profile_trace)"
    else
      why=$(field "$result" kernel_profile_error)
      say "$label: no kernel profile (${why:-no trace})"
    fi
  fi
  ENTRIES+=("$entry")
}

warm_up() {  # $1 label, $2 overrides: a short proxy run, recorded in results.tgz, left out of the tables
  local label=$1 extra=$2 t=$(( $(left) - 25 )); [ "$t" -gt 180 ] && t=180
  if [ "$t" -lt 60 ]; then say "$label: ${t}s left, not started"; return 1; fi
  say "$label: warm-up of $WARMUP_STEPS steps, left out: run_recipe.py proxy_1gpu $extra (timeout ${t}s)"
  run_proxy "$label" "$WARMUP_STEPS" "$RUN/warmup" "$t" 15 "$extra"
  local rc=$?
  rm -f "$RUN/logs/$label.full.log"
  say "$label: warm-up exit $rc"
}

say "runs: ${LIST[*]} | steps $STEPS, profiled step (proxy) $PROFILE_STEP, budget ${BUDGET}s | commit ${COMMIT:-unknown}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$LOG"
# TE's one-launch grouped GEMM for the experts needs cuBLASLt 13.4+ on Hopper (130400): the version loaded.
python3 -c 'import transformer_engine.pytorch, transformer_engine_torch as t; print("cuBLASLt", t.get_cublasLt_version())' 2>&1 | tail -1 | tee -a "$LOG"
for v in "${LIST[@]}"; do
  label=$(echo "${v%%|*}" | tr -d '[:space:]'); extra=${v#*|}
  [ -n "$label" ] || continue
  case $label in
    torchtitan*) torchtitan "$label" "$extra" ;;
    warmup*) warm_up "$label" "$extra"; WARMUPS=$((WARMUPS + 1)) ;;
    *) proxy "$label" "$extra" ;;
  esac
  reap "$label"
  if [ "${#ENTRIES[@]}" -gt 0 ]; then
    python3 benchmarks/side_by_side.py report "${ENTRIES[@]}" --md "$RUN/side_by_side.md" >/dev/null 2>>"$LOG"
  fi
  bundle
done
MEASURED=$((${#LIST[@]} - WARMUPS))
say "done: ${#ENTRIES[@]} of $MEASURED runs with results"
[ -f "$RUN/side_by_side.md" ] && cat "$RUN/side_by_side.md"
ls -la "$OUT" | tee -a "$LOG"
[ "${#ENTRIES[@]}" = "$MEASURED" ]
