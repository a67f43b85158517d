# DeepSeek-V3 HF -> Megatron conversion before training (MLPerf style): fill in, then
#     source conversion/config_conversion.sh && bash conversion/run_conversion.sh
# After it finishes, point the training config's checkpoint (MODEL_CKPT) at $MEGATRON_CKPT.

# Checkpoints: the MLPerf BF16 one (deepseekv3_checkpoint_bf16) or the official FP8 DeepSeek-V3 one
# (its FP8 weights are dequantized to BF16 during the import).
export HF_CKPT=/path/to/deepseekv3_checkpoint_bf16
export MEGATRON_CKPT=/path/to/deepseekv3_megatron          # must not exist yet (or be empty)

# Conversion layout: PP x lcm(TP, EP) GPUs. The torch_dist output reshards on load, so this only sets
# how many GPUs share the work. DeepSeek-V3 671B: 61 layers (PP must divide them), 128 heads, 256 experts.
# TP=2, EP=64: 64 GPUs, each holding 1/64 of the routed experts and half of the dense weights.
export TP=2
export PP=1
export EP=64

# Where it runs: LOCAL=1 runs torchrun on this machine; otherwise a Slurm job (pyxis/enroot).
export LOCAL=0
export GPU_TYPE=gb200               # h100 | h200 | b200 | gb200 | gb300 (picks the default image)
export GPUS_PER_NODE=4              # 4 on GB200/GB300 NVL72 nodes, 8 on H100/H200/B200
export SBATCH_ACCOUNT=your_account
export SBATCH_PARTITION=batch
export RUN_CONF_IMAGE=registry.example.com/team/dsv3-recipes:gb200-0.1.0
export RUN_CONF_MOUNTS=/lustre/checkpoints:/lustre/checkpoints   # the paths above must be inside
export WALLTIME=02:00:00
