"""DeepSeek-V3 checkpoint conversion on Megatron-Bridge's AutoBridge: HF <-> Megatron, FP8 source
weights, logit verification and a generation check (see README.md).

Launch side (``checks``, ``staging``, ``launch``, ``cli``): standard library and NeMo-Run only.
Train side (``tasks`` and what it imports, ``tiny``, ``selfcheck``): torch, megatron-bridge,
transformers, inside the job.
"""
