#!/usr/bin/env bash
# Launch MLPerf Training DeepSeek-V3 671B from a Slurm login node, outside the container:
#
#     source config_GB300_64x4x256xtp1pp4cp1.sh && bash run_deepseek_v3_671b.sh
#
# The config file documents every variable. This script turns them into `dsv3 pretrain` recipe
# overrides and Slurm options; dsv3 checks the MLPerf rules, the data, tokenizer and checkpoints,
# then submits one sbatch job through NeMo-Run and waits for it (a failed job fails the script).
# DETACH=1 returns once it is submitted; DRYRUN=1 submits nothing: it prints the resolved recipe
# (JSON) and the sbatch script that would be submitted.
# DSV3 names the command that runs the dsv3 CLI (default: `dsv3` from `pip install dsv3-recipes`).
set -euo pipefail

: "${FACTORY:?source a config_*.sh first (FACTORY not set)}"
: "${ACCOUNT:?ACCOUNT not set}" "${PARTITION:?PARTITION not set}" "${TIME:?TIME not set}"
: "${NNODES:?NNODES not set}" "${GPUS_PER_NODE:?GPUS_PER_NODE not set}"
: "${LOG_DIR:?LOG_DIR not set}" "${IMAGE:?IMAGE not set}" "${DATA_DIR:?DATA_DIR not set}"
: "${MODEL_CKPT:?MODEL_CKPT not set}" "${TRAIN_SHARDS:?TRAIN_SHARDS not set}"
: "${GBS:?GBS not set}" "${MBS:?MBS not set}" "${MAX_STEPS:?MAX_STEPS not set}"
: "${TENSOR_PARALLEL_SIZE:?}" "${PIPELINE_PARALLEL_SIZE:?}" "${CONTEXT_PARALLEL_SIZE:?}"
: "${EXPERT_PARALLEL_SIZE:?}" "${PIPELINE_LAYOUT:?}"
: "${SUBMISSION_ORG:?SUBMISSION_ORG not set}" "${SUBMISSION_PLATFORM:?SUBMISSION_PLATFORM not set}"
SEGMENT=${SEGMENT:-}
VIRTUAL_PIPELINE_PARALLEL_SIZE=${VIRTUAL_PIPELINE_PARALLEL_SIZE:-}
CHECKPOINT_DIR=${CHECKPOINT_DIR:-}
SAVE_CKPT_STEPS=${SAVE_CKPT_STEPS:-0}
RESUME=${RESUME:-0}
EXIT_DURATION_MINS=${EXIT_DURATION_MINS:-}
SEED=${SEED:-$RANDOM}
EXP_NAME=${EXP_NAME:-deepseek_v3_671b_${NNODES}x${GPUS_PER_NODE}_gbs${GBS}}
CONFIG_FILE=${CONFIG_FILE:-unknown}
DRYRUN=${DRYRUN:-0}
DETACH=${DETACH:-0}
DSV3=${DSV3:-dsv3}

# Bad input stops here, before anything is created: a count that is not one would turn a test like
# `[ "$SAVE_CKPT_STEPS" -gt 0 ]` into "no saving" with exit 0.
refuse() { echo "run_deepseek_v3_671b.sh: error: $1" >&2; exit 2; }
for var in NNODES GPUS_PER_NODE GBS MBS MAX_STEPS SAVE_CKPT_STEPS SEED ${SEGMENT:+SEGMENT} \
  ${EXIT_DURATION_MINS:+EXIT_DURATION_MINS} ${VIRTUAL_PIPELINE_PARALLEL_SIZE:+VIRTUAL_PIPELINE_PARALLEL_SIZE}; do
  [[ ${!var} =~ ^[0-9]+$ ]] || refuse "$var: expected a non-negative integer, got '${!var}'"
done
for var in RESUME DRYRUN DETACH; do
  [[ ${!var} =~ ^[01]$ ]] || refuse "$var: expected 0 or 1, got '${!var}'"
done
for var in LOG_DIR DATA_DIR MODEL_CKPT ${CHECKPOINT_DIR:+CHECKPOINT_DIR}; do
  [[ ${!var} =~ ^/[A-Za-z0-9._/+@=~-]*$ ]] || refuse "$var: expected an absolute path without spaces, ':' or ',' (it is mounted), got '${!var}'"
done
if [ "$SAVE_CKPT_STEPS" -gt 0 ] && [ -z "$CHECKPOINT_DIR" ]; then
  refuse "SAVE_CKPT_STEPS: $SAVE_CKPT_STEPS saves need CHECKPOINT_DIR"
fi

# The learning rate is not passed: the recipe derives it from GBS by the benchmark's rule.
OUT_DIR="$LOG_DIR/$EXP_NAME"
TRAIN_PATHS=""
for shard in $TRAIN_SHARDS; do
  TRAIN_PATHS+="${TRAIN_PATHS:+,}\"$DATA_DIR/c4-train.en_${shard}_text_document\""
done

overrides=(
  "launch.num_nodes=$NNODES"
  "launch.gpus_per_node=$GPUS_PER_NODE"
  "launch.nvl_segment_nodes=${SEGMENT:-None}"
  "train.global_batch_size=$GBS"
  "train.micro_batch_size=$MBS"
  "train.train_iters=$MAX_STEPS"
  "train.seed=$SEED"
  "model.tensor_model_parallel_size=$TENSOR_PARALLEL_SIZE"
  "model.pipeline_model_parallel_size=$PIPELINE_PARALLEL_SIZE"
  "model.virtual_pipeline_model_parallel_size=${VIRTUAL_PIPELINE_PARALLEL_SIZE:-None}"
  "model.pipeline_model_parallel_layout=$PIPELINE_LAYOUT"
  "model.context_parallel_size=$CONTEXT_PARALLEL_SIZE"
  "model.expert_model_parallel_size=$EXPERT_PARALLEL_SIZE"
  "dataset.data_paths=[$TRAIN_PATHS]"
  "dataset.validation_paths=[\"$DATA_DIR/c4-validation-91205-samples.en_text_document\"]"
  "dataset.data_cache_path=$LOG_DIR/npy_index"
  "tokenizer.tokenizer_model=$DATA_DIR/tokenizer"
  "checkpoint.pretrained_checkpoint=$MODEL_CKPT"
  "output_dir=$OUT_DIR"
  "mlperf.submission_org=$SUBMISSION_ORG"
  "mlperf.submission_platform=$SUBMISSION_PLATFORM"
  "mlperf.config_filename=$CONFIG_FILE"
)
MOUNTS="$DATA_DIR:$DATA_DIR,$MODEL_CKPT:$MODEL_CKPT,$LOG_DIR:$LOG_DIR"
if [ -n "$CHECKPOINT_DIR" ]; then
  overrides+=("checkpoint.save=$CHECKPOINT_DIR")
  MOUNTS+=",$CHECKPOINT_DIR:$CHECKPOINT_DIR"
  if [ "$SAVE_CKPT_STEPS" -gt 0 ]; then
    overrides+=("checkpoint.save_interval=$SAVE_CKPT_STEPS")
  fi
fi
if [ "$RESUME" = 1 ]; then
  : "${CHECKPOINT_DIR:?RESUME=1 continues the checkpoint in CHECKPOINT_DIR: set it}"
  overrides+=("checkpoint.load=$CHECKPOINT_DIR")  # Bridge restores step, optimizer, LR schedule, RNG
fi
if [ -n "$EXIT_DURATION_MINS" ]; then
  overrides+=("train.exit_duration_in_mins=$EXIT_DURATION_MINS")
fi

args=(
  pretrain --factory "$FACTORY" --executor slurm
  --account "$ACCOUNT" --partition "$PARTITION" --time "$TIME"
  --container-image "$IMAGE" --container-mounts "$MOUNTS" --job-dir "$LOG_DIR/nemo_run"
)
if [ "$DRYRUN" = 1 ]; then
  # shellcheck disable=SC2086
  $DSV3 show --json "$FACTORY" "${overrides[@]}"
  args+=(--dryrun)
else
  # shellcheck disable=SC2086
  $DSV3 plan "$FACTORY" "${overrides[@]}" >/dev/null  # the recipe is accepted before anything is made
  mkdir -p "$LOG_DIR" ${CHECKPOINT_DIR:+"$CHECKPOINT_DIR"}  # the job mounts them
  if [ "$DETACH" = 1 ]; then
    args+=(--detach)
  fi
fi
# shellcheck disable=SC2086  # DSV3 may be a command with arguments (python -m dsv3_recipes.cli)
exec $DSV3 "${args[@]}" "${overrides[@]}"
