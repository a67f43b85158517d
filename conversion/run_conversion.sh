#!/usr/bin/env bash
# HF -> Megatron conversion of DeepSeek-V3 through NeMo-Run, configured by environment variables
# (see config_conversion.sh). Extra arguments go to `dsv3 convert import` (e.g. --dryrun).
set -euo pipefail

: "${HF_CKPT:?set HF_CKPT to the Hugging Face checkpoint directory (source config_conversion.sh)}"
: "${MEGATRON_CKPT:?set MEGATRON_CKPT to the output directory (source config_conversion.sh)}"

args=(import --hf-path "$HF_CKPT" --megatron-path "$MEGATRON_CKPT"
      --tp "${TP:-1}" --pp "${PP:-1}" --ep "${EP:-1}")
if [ "${LOCAL:-0}" = 1 ]; then
  args+=(--executor local)
else
  # the account, partition, image and mounts are read from SBATCH_ACCOUNT, SBATCH_PARTITION,
  # RUN_CONF_IMAGE and RUN_CONF_MOUNTS by `dsv3 convert`
  args+=(--executor slurm --time "${WALLTIME:-02:00:00}")
fi

# run from a checkout too (relative paths stay the caller's): the package root goes on PYTHONPATH
PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}" \
  exec "${PYTHON:-python3}" -m dsv3_recipes.cli convert "${args[@]}" "$@"
