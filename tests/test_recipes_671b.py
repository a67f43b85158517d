"""Every 671B recipe against the document it comes from, flag for flag."""

import re
import shlex
from pathlib import Path

import fiddle as fdl
import pytest

from dsv3_recipes import recipes
from dsv3_recipes.launch import recipe_of
from dsv3_recipes.recipe import RecipeError

SEED000 = Path(__file__).parent / "data" / "seed000_gb200_launch.sh"

# Megatron-LM flag -> recipe field (flags without a value set the field to the given constant).
FIELD_OF_FLAG = {
    "--distributed-timeout-minutes": "train.distributed_timeout_minutes",
    "--tensor-model-parallel-size": "model.tensor_model_parallel_size",
    "--pipeline-model-parallel-size": "model.pipeline_model_parallel_size",
    "--expert-model-parallel-size": "model.expert_model_parallel_size",
    "--context-parallel-size": "model.context_parallel_size",
    "--expert-tensor-parallel-size": "model.expert_tensor_parallel_size",
    "--use-distributed-optimizer": "optimizer.use_distributed_optimizer",
    "--overlap-grad-reduce": "comm_overlap.overlap_grad_reduce",
    "--overlap-param-gather": "comm_overlap.overlap_param_gather",
    "--sequence-parallel": "model.sequence_parallel",
    "--micro-batch-size": "train.micro_batch_size",
    "--global-batch-size": "train.global_batch_size",
    "--train-samples": "train.train_samples",
    "--exit-duration-in-mins": "train.exit_duration_in_mins",
    "--no-save-optim": ("checkpoint.save_optim", False),
    "--no-check-for-nan-in-loss-and-grad": ("train.check_for_nan_in_loss_and_grad", False),
    "--cross-entropy-loss-fusion": "model.cross_entropy_loss_fusion",
    "--cross-entropy-fusion-impl": "model.cross_entropy_fusion_impl",
    "--manual-gc": "train.manual_gc",
    "--manual-gc-interval": "train.manual_gc_interval",
    "--enable-experimental": "train.enable_experimental",
    "--seq-length": "model.seq_length",
    "--max-position-embeddings": "model.seq_length",
    "--tokenizer-type": "tokenizer.tokenizer_type",
    "--tokenizer-model": "tokenizer.tokenizer_model",
    "--split": "dataset.split",
    "--no-mmap-bin-files": ("dataset.mmap_bin_files", False),
    "--no-create-attention-mask-in-dataloader": ("dataset.create_attention_mask", False),
    "--num-workers": "dataset.num_workers",
    "--num-layers": "model.num_layers",
    "--hidden-size": "model.hidden_size",
    "--ffn-hidden-size": "model.ffn_hidden_size",
    "--num-attention-heads": "model.num_attention_heads",
    "--kv-channels": "model.qk_head_dim",
    "--rotary-base": "model.rotary_base",
    "--make-vocab-size-divisible-by": "model.make_vocab_size_divisible_by",
    "--norm-epsilon": "model.norm_epsilon",
    "--attention-dropout": "model.attention_dropout",
    "--hidden-dropout": "model.hidden_dropout",
    "--clip-grad": "optimizer.clip_grad",
    "--weight-decay": "optimizer.weight_decay",
    "--qk-layernorm": "model.qk_layernorm",
    "--lr-decay-samples": "scheduler.lr_decay_samples",
    "--lr-warmup-samples": "scheduler.lr_warmup_samples",
    "--lr-warmup-init": "scheduler.lr_warmup_init",
    "--lr": "optimizer.lr",
    "--min-lr": "optimizer.min_lr",
    "--lr-decay-style": "scheduler.lr_decay_style",
    "--adam-beta1": "optimizer.adam_beta1",
    "--adam-beta2": "optimizer.adam_beta2",
    "--num-experts": "model.num_moe_experts",
    "--moe-ffn-hidden-size": "model.moe_ffn_hidden_size",
    "--moe-shared-expert-intermediate-size": "model.moe_shared_expert_intermediate_size",
    "--moe-router-load-balancing-type": "model.moe_router_load_balancing_type",
    "--moe-router-topk": "model.moe_router_topk",
    "--moe-grouped-gemm": "model.moe_grouped_gemm",
    "--moe-aux-loss-coeff": "model.moe_aux_loss_coeff",
    "--moe-router-group-topk": "model.moe_router_group_topk",
    "--moe-router-num-groups": "model.moe_router_num_groups",
    "--moe-router-pre-softmax": "model.moe_router_pre_softmax",
    "--moe-router-padding-for-quantization": "model.moe_router_padding_for_quantization",
    "--moe-router-topk-scaling-factor": "model.moe_router_topk_scaling_factor",
    "--moe-router-score-function": "model.moe_router_score_function",
    "--moe-router-enable-expert-bias": "model.moe_router_enable_expert_bias",
    "--moe-router-bias-update-rate": "model.moe_router_bias_update_rate",
    "--moe-router-dtype": "model.moe_router_dtype",
    "--moe-permute-fusion": "model.moe_permute_fusion",
    "--moe-router-fusion": "model.moe_router_fusion",
    "--q-lora-rank": "model.q_lora_rank",
    "--kv-lora-rank": "model.kv_lora_rank",
    "--qk-head-dim": "model.qk_head_dim",
    "--qk-pos-emb-head-dim": "model.qk_pos_emb_head_dim",
    "--v-head-dim": "model.v_head_dim",
    "--rotary-scaling-factor": "model.rotary_scaling_factor",
    "--mscale": "model.mscale",
    "--mscale-all-dim": "model.mscale_all_dim",
    "--eval-iters": "train.eval_iters",
    "--eval-interval": "train.eval_interval",
    "--no-load-optim": ("checkpoint.load_optim", False),
    "--no-load-rng": ("checkpoint.load_rng", False),
    "--save-interval": "checkpoint.save_interval",
    "--dist-ckpt-strictness": "checkpoint.dist_ckpt_strictness",
    "--init-method-std": "model.init_method_std",
    "--log-timers-to-tensorboard": "logger.log_timers_to_tensorboard",
    "--log-memory-to-tensorboard": "logger.log_memory_to_tensorboard",
    "--log-validation-ppl-to-tensorboard": "logger.log_validation_ppl_to_tensorboard",
    "--log-throughput": "logger.log_throughput",
    "--log-interval": "logger.log_interval",
    "--logging-level": "logger.logging_level",
    "--wandb-project": "logger.wandb_project",
    "--wandb-exp-name": "logger.wandb_exp_name",
    "--bf16": "mixed_precision.bf16",
    "--recompute-granularity": "model.recompute_granularity",
    "--recompute-modules": "model.recompute_modules",
    "--cuda-graph-impl": "model.cuda_graph_impl",
    "--cuda-graph-scope": "model.cuda_graph_scope",
    "--te-rng-tracker": "model.use_te_rng_tracker",
    "--pipeline-model-parallel-layout": "model.pipeline_model_parallel_layout",
    "--moe-router-force-load-balancing": "model.moe_router_force_load_balancing",
    "--moe-token-dispatcher-type": "model.moe_token_dispatcher_type",
    "--moe-flex-dispatcher-backend": "model.moe_flex_dispatcher_backend",
    "--moe-hybridep-num-sms": "model.moe_hybridep_num_sms",
    "--fp8-recipe": "mixed_precision.fp8_recipe",
    "--fp8-format": "mixed_precision.fp8_format",
    "--fp8-param-gather": "mixed_precision.fp8_param_gather",
    "--reuse-grad-buf-for-mxfp8-param-ag": "mixed_precision.reuse_grad_buf_for_mxfp8_param_ag",
    "--use-precision-aware-optimizer": "optimizer.use_precision_aware_optimizer",
    "--main-grads-dtype": "optimizer.main_grads_dtype",
    "--main-params-dtype": "optimizer.main_params_dtype",
    "--exp-avg-dtype": "optimizer.exp_avg_dtype",
    "--exp-avg-sq-dtype": "optimizer.exp_avg_sq_dtype",
}
# Flags that are not recipe fields, each with the reason.
NOT_A_FIELD = {
    "--use-mcore-models": "Bridge only builds Megatron-Core models",
    "--use-flash-attn": "legacy-attention switch; with TE, cuDNN fused attention (NVTE_FUSED_ATTN=1)",
    "--disable-bias-linear": "fixed DSV3 architecture (train/container.py)",
    "--transformer-impl": "always transformer_engine",
    "--position-embedding-type": "fixed DSV3 architecture: RoPE (YaRN)",
    "--normalization": "fixed DSV3 architecture: RMSNorm",
    "--swiglu": "fixed DSV3 architecture",
    "--untie-embeddings-and-output-weights": "fixed DSV3 architecture",
    "--multi-latent-attention": "fixed DSV3 architecture",
    "--auto-detect-ckpt-format": "Bridge detects the checkpoint format",
    "--data-cache-path": "site path",
    "--data-path": "site path",
    "--save": "site path (output_dir/checkpoints by default)",
    "--load": "site path (None in the seed)",
    "--tensorboard-dir": "site path (output_dir/tensorboard by default)",
}


def _seed_flags(path: Path) -> dict[str, list[str]]:
    flags: dict[str, list[str]] = {}
    current = None
    for token in shlex.split(path.read_text().replace("\\\n", " "), comments=True):
        if token.startswith("--"):
            current = token
            flags[current] = []
        elif current:
            flags[current].append(token)
    return flags


def _get(recipe, dotted: str):
    value = recipe
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _expected(actual, values: list[str]):
    if not values:
        return True
    if isinstance(actual, list):
        return values
    if len(values) == 1 and isinstance(actual, bool | int | float):
        return type(actual)(float(values[0])) if isinstance(actual, float) else type(actual)(values[0])
    return values[0]


def test_gb200_mxfp8_matches_seed000_flag_for_flag():
    recipe = recipe_of(recipes.get("gb200_mxfp8_256gpu"))
    flags = _seed_flags(SEED000)
    unknown = set(flags) - set(FIELD_OF_FLAG) - set(NOT_A_FIELD) - {"--moe-layer-freq"}
    assert not unknown, f"seed 000 flags without a recipe field: {sorted(unknown)}"
    for flag, values in flags.items():
        if flag in NOT_A_FIELD:
            continue
        if flag == "--moe-layer-freq":
            dense, moe = map(int, re.fullmatch(r"\(\[0\]\*(\d+)\+\[1\]\*(\d+)\)", values[0]).groups())
            assert (recipe.model.first_k_dense_replace, recipe.model.num_layers) == (dense, dense + moe)
            continue
        target = FIELD_OF_FLAG[flag]
        if isinstance(target, tuple):
            assert _get(recipe, target[0]) == target[1], flag
            continue
        actual = _get(recipe, target)
        assert actual == _expected(actual, values), f"{flag} {values} vs {target}={actual!r}"
    # Virtual pipeline: 32 layout stages over PP8 (the seed's VPP4 in its wandb name).
    assert recipe.model.virtual_pipeline_model_parallel_size == 4
    assert recipe.model.mtp_num_layers is None  # the seed launches without --mtp-num-layers


def test_gb200_mxfp8_cluster_and_environment():
    recipe = recipe_of(recipes.get("gb200_mxfp8_256gpu"))
    assert (recipe.launch.num_nodes, recipe.launch.gpus_per_node, recipe.launch.gpu_type) == (64, 4, "gb200")
    assert recipe.launch.nvl_segment_nodes == 8  # 32 GPUs (EP32) per NVL72 rack
    assert recipe.launch.bindpcie
    assert recipe.env_vars == {
        "CUDA_DEVICE_MAX_CONNECTIONS": "1",
        "NVTE_FWD_LAYERNORM_SM_MARGIN": "0",
        "NVTE_BWD_LAYERNORM_SM_MARGIN": "0",
        "NVLINK_DOMAIN_SIZE": "72",
        "NVTE_ALLOW_NONDETERMINISTIC_ALGO": "1",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        "NCCL_NVLS_ENABLE": "0",
        "NVTE_FUSED_ATTN": "1",
        "NVTE_NORM_FWD_USE_CUDNN": "1",
        "NVTE_NORM_BWD_USE_CUDNN": "1",
        "PYTHONWARNINGS": "ignore",
        "NCCL_DEBUG": "VERSION",
        "NCCL_GRAPH_REGISTER": "0",
    }


def test_h100_fp8_blockwise_has_every_seed001_optimisation():
    r = recipe_of(recipes.get("h100_fp8_blockwise"))
    m = r.model
    assert (m.moe_router_dtype, m.moe_permute_fusion, m.moe_grouped_gemm, m.moe_router_fusion) == (
        "fp32",
        True,
        True,
        True,
    )
    assert (m.moe_token_dispatcher_type, m.moe_flex_dispatcher_backend) == ("flex", "deepep")
    assert (m.recompute_granularity, m.recompute_modules) == ("selective", ["mla_up_proj", "mlp"])
    assert (m.cross_entropy_loss_fusion, m.cross_entropy_fusion_impl) == (True, "te")
    assert (r.mixed_precision.fp8_recipe, r.mixed_precision.fp8_format) == ("blockwise", "e4m3")
    assert r.mixed_precision.fp8_param_gather
    o = r.optimizer
    assert (o.use_precision_aware_optimizer, o.exp_avg_dtype, o.exp_avg_sq_dtype) == (True, "bf16", "bf16")
    assert (r.train.manual_gc, r.train.manual_gc_interval) == (True, 10)
    assert r.comm_overlap.overlap_moe_expert_parallel_comm and r.comm_overlap.delay_wgrad_compute
    assert (m.mtp_num_layers, m.mtp_loss_scaling_factor) == (1, 0.1)
    assert m.pipeline_model_parallel_layout == "Et|(tt|)*30mL"
    assert r.train.enable_experimental and m.apply_rope_fusion
    assert m.moe_router_padding_for_quantization and m.moe_router_force_load_balancing
    assert m.pipeline_model_parallel_size * m.virtual_pipeline_model_parallel_size == 32


def test_bridge_default_matches_seed004():
    r = recipe_of(recipes.get("bridge_default_1024gpu"))
    m = r.model
    assert (m.tensor_model_parallel_size, m.pipeline_model_parallel_size, m.expert_model_parallel_size) == (
        2,
        16,
        64,
    )
    assert m.virtual_pipeline_model_parallel_size is None
    assert (r.launch.num_nodes, r.launch.num_gpus) == (128, 1024)
    assert (m.mtp_num_layers, m.mtp_loss_scaling_factor) == (1, 0.1)
    assert (r.train.global_batch_size, r.train.train_iters, m.seq_length) == (4096, 500_000, 4096)
    assert m.sequence_parallel and m.recompute_granularity == "selective" and m.moe_permute_fusion
    assert (r.optimizer.main_params_dtype, r.optimizer.main_grads_dtype, r.optimizer.exp_avg_dtype) == (
        "fp32",
        "bf16",
        "bf16",
    )


@pytest.mark.parametrize(
    ("name", "gpu", "gpus", "dp", "gbs"),
    [
        ("h100_bf16_512gpu", "h100", 512, 64, 1024),
        ("b200_bf16_256gpu", "b200", 256, 32, 512),
        ("gb200_bf16_256gpu", "gb200", 256, 32, 512),
    ],
)
def test_torchtitan_baselines_match_seed003_tables(name, gpu, gpus, dp, gbs, monkeypatch):
    for knob in recipes.torchtitan.KNOBS:
        monkeypatch.delenv(knob, raising=False)
    r = recipe_of(recipes.get(name))
    m = r.model
    assert (r.launch.gpu_type, r.launch.num_gpus, r.data_parallel_size) == (gpu, gpus, dp)
    assert (m.tensor_model_parallel_size, m.expert_model_parallel_size, m.pipeline_model_parallel_size) == (
        1,
        32,
        8,
    )
    assert (r.train.micro_batch_size, r.train.global_batch_size, r.train.train_iters) == (1, gbs, 200)
    assert m.seq_length == 4096 and r.mixed_precision.fp8_recipe is None
    assert (m.recompute_granularity, r.optimizer.lr, r.scheduler.lr_warmup_iters) == ("full", 2.2e-4, 100)
    assert r.scheduler.lr_wsd_decay_iters == 100  # 0.8 x 200 clamped to the 100 steps after warmup


def test_torchtitan_environment_knobs(monkeypatch):
    env = {
        "GPU_TYPE": "h100",
        "JOB_TOTAL_GPUS": "1024",
        "DATA_PARALLEL_SHARD_DEGREE": "256",
        "PIPELINE_PARALLEL_DEGREE": "4",
        "EXPERT_PARALLEL_DEGREE": "16",
        "TRAINING_STEPS": "5000",
        "LOCAL_BATCH_SIZE": "8",
        "SEQ_LEN": "8192",
        "DATASET_PATH": "/data/c4_text_document",
        "ENABLE_PROFILE": "true",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    r = recipe_of(recipes.get("torchtitan_bf16"))
    m = r.model
    assert (r.launch.num_nodes, r.launch.gpus_per_node) == (128, 8)
    assert (m.pipeline_model_parallel_size, m.expert_model_parallel_size, m.seq_length) == (4, 16, 8192)
    assert m.pipeline_model_parallel_layout == "Et*15|t*16|t*16|t*14L"
    assert (r.train.global_batch_size, r.train.train_iters) == (8 * 256, 5000)
    assert r.scheduler.lr_wsd_decay_iters == 4000
    assert r.dataset.data_paths == ["/data/c4_text_document"]
    assert r.profiling.use_pytorch_profiler


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GPU_TYPE": "a100"}, "GPU_TYPE: got 'a100'; allowed: h100, b200, gb200"),
        (
            {"GPU_TYPE": "h100", "JOB_TOTAL_GPUS": "512", "DATA_PARALLEL_SHARD_DEGREE": "32"},
            "DATA_PARALLEL_SHARD_DEGREE: 32 x PIPELINE_PARALLEL_DEGREE 8 must equal JOB_TOTAL_GPUS 512",
        ),
        ({"GPU_TYPE": "h100", "TRAINING_STEPS": "many"}, "TRAINING_STEPS: expected an integer, got 'many'"),
        (
            {"GPU_TYPE": "gb200", "JOB_TOTAL_GPUS": "258"},
            "JOB_TOTAL_GPUS: 258 is not a multiple of GPUS_PER_NODE=4",
        ),
    ],
)
def test_torchtitan_bad_knobs_name_the_variable(env, message, monkeypatch):
    for knob in recipes.torchtitan.KNOBS:
        monkeypatch.delenv(knob, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(RecipeError) as err:
        recipes.get("torchtitan_bf16")
    assert str(err.value).startswith(message)


def test_each_671b_field_from_a_seed_says_which():
    """A recipe module's seed-derived assignments carry a `# seed NNN` (or Bridge) source comment."""
    source = Path(recipes.gb200.__file__).read_text()
    body = source.split("def gb200_mxfp8_256gpu")[1].split("def gb200_bf16_256gpu")[0]
    assignments = [
        line for line in body.splitlines() if " = " in line and line.strip().startswith(("m.", "t.", "o."))
    ]
    assert assignments and all("# seed 000" in line for line in assignments)
    assert fdl.build(recipes.get("gb200_mxfp8_256gpu").recipe).name == "gb200_mxfp8_256gpu"
