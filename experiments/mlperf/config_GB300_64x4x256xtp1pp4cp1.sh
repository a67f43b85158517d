# MLPerf Training DeepSeek-V3 671B on 64 GB300 nodes x 4 GPUs: TP1 PP4 CP1, 256 sequences per
# data-parallel rank (DP 64, GBS 16384), BF16 -- [mlperf-dsv3]'s reference system.
#
#     source config_GB300_64x4x256xtp1pp4cp1.sh && bash run_deepseek_v3_671b.sh
#
# Fill in the <...> values. Every path must exist under the same name on this login node and on the
# compute nodes: the launch checks the data, tokenizer and checkpoints here before it submits, and the
# job mounts each path at the same place in the container.

# --- Recipe: the dsv3 recipe these values override (`dsv3 show mlperf_gb300_256gpu` prints it all).
export FACTORY=mlperf_gb300_256gpu

# --- Slurm
export ACCOUNT="<SLURM_ACCOUNT>"     # sbatch --account
export PARTITION="<SLURM_PARTITION>" # sbatch --partition
export TIME="02:00:00"               # job time limit; a converging run takes about 1.5 h ([mlperf-dsv3])
export NNODES=64                     # sbatch --nodes
export GPUS_PER_NODE=4               # GPUs and tasks per node
export SEGMENT=16                    # sbatch --segment: nodes per NVLink domain; EP64 spans 16 GB300 trays
export ADDITIONAL_SLURM_PARAMS=""    # more sbatch options, "key=value;flag;..." (e.g. "reservation=r1")

# --- Paths
export LOG_DIR="<LOG_DIR>"       # results: NeMo-Run job files, logs, <LOG_DIR>/<EXP_NAME>/mlperf_log.txt
export IMAGE="<IMAGE>"           # container image, registry/repo:tag (docker/README.md builds it)
export DATA_DIR="<DATA_DIR>"     # [mlperf-dsv3]'s preprocessed C4: c4-train.en_<n>_text_document.{bin,idx},
                                 # c4-validation-91205-samples.en_text_document.{bin,idx}, tokenizer/
export TRAIN_SHARDS="6"          # the c4-train.en_<n> shards to train on, space-separated
export MODEL_CKPT="<MODEL_CKPT>" # the MLPerf checkpoint converted to Megatron format ([mlperf-dsv3])
export EXP_NAME=""               # run name; empty: deepseek_v3_671b_<NNODES>x<GPUS_PER_NODE>_gbs<GBS>

# --- Checkpoints across Slurm jobs (a timed MLPerf run saves nothing: leave CHECKPOINT_DIR empty)
export CHECKPOINT_DIR=""       # save checkpoints here; empty: save none
export SAVE_CKPT_STEPS=0       # also save every N steps; 0: only when the job ends or hits EXIT_DURATION_MINS
export RESUME=0                # 1: continue the latest checkpoint in CHECKPOINT_DIR: same step, LR schedule,
                               # optimizer state and RNG; 0: start from MODEL_CKPT at step 0
export EXIT_DURATION_MINS=""   # save and exit after this many minutes (leave 10+ minutes before TIME)

# --- Training ([mlperf-dsv3] fixes the rest: AdamW, warmup 4, cosine to 12,000 steps, min LR 1e-8)
export GBS=16384   # global batch size, >= 15360; the LR follows it: 0.000024 * sqrt(GBS / 16384)
export MBS=1       # micro-batch size
export MAX_STEPS=100 # stop here if the 3.60 target is not reached first (RCPs in mlperf-logging: 45-48 steps)
export SEED=""     # empty: a new random seed per launch, as MLPerf's repeated runs need

# --- Parallelism (the file name's tp1pp4cp1); check a change with `dsv3 plan mlperf_gb300_256gpu key=value ...`
export TENSOR_PARALLEL_SIZE=1
export PIPELINE_PARALLEL_SIZE=4
export VIRTUAL_PIPELINE_PARALLEL_SIZE=""          # empty: no interleaving
export CONTEXT_PARALLEL_SIZE=1
export EXPERT_PARALLEL_SIZE=64
export PIPELINE_LAYOUT="Et*16|t*16|t*16|t*13mL"  # embedding, 61 layers, MTP and loss over the 4 stages

# --- MLPerf submission fields of the log
export SUBMISSION_ORG="<ORG>"
export SUBMISSION_PLATFORM="64xGB300"
CONFIG_FILE="$(basename "${BASH_SOURCE[0]}")"
export CONFIG_FILE
