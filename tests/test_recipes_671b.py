"""Every 671B recipe against the document it comes from, flag for flag.

The sources' own text is kept verbatim under tests/data/ (launch scripts, flag lists, tables): each
test parses it, so an edit to a recipe or to a source's copy shows as a failure.
"""

import ast
import importlib.util
import re
import shlex
from pathlib import Path

import fiddle as fdl
import pytest

from dsv3_recipes import recipes
from dsv3_recipes.launch.submit import recipe_of
from dsv3_recipes.recipe.resolve import resolve
from dsv3_recipes.recipe.rules import importable
from dsv3_recipes.recipe.schema import RecipeError

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parent.parent
SEED000 = DATA / "seed000_gb200_launch.sh"
SEED001 = DATA / "seed001_h100_key_configurations.md"
SEED003 = DATA / "seed003_torchtitan.md"
SEED004 = DATA / "seed004_bridge_dsv3.md"

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
    assert not set(NOT_A_FIELD) - set(flags), "a flag listed as not a field is gone from the seed"
    freq = flags.pop("--moe-layer-freq")
    dense, moe = map(int, re.fullmatch(r"\(\[0\]\*(\d+)\+\[1\]\*(\d+)\)", freq[0]).groups())
    assert (recipe.model.first_k_dense_replace, recipe.model.num_layers) == (dense, dense + moe)
    _check_flags(recipe, {f: v for f, v in flags.items() if f not in NOT_A_FIELD}, FIELD_OF_FLAG)
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


# [mcore-h100]'s flags beyond [mcore-gb200]'s map, and the ones its text names without setting.
SEED001_FIELD_OF_FLAG = {
    **FIELD_OF_FLAG,
    "--moe-enable-deepep": ("model.moe_flex_dispatcher_backend", "deepep"),
    "--overlap-moe-expert-parallel-comm": "comm_overlap.overlap_moe_expert_parallel_comm",
    "--delay-wgrad-compute": "comm_overlap.delay_wgrad_compute",
    "--mtp-num-layers": "model.mtp_num_layers",
    "--mtp-loss-scaling-factor": "model.mtp_loss_scaling_factor",
    "--no-rope-fusion": ("model.apply_rope_fusion", True),  # "do not add --no-rope-fusion"
    "--permute-fusion": "model.moe_permute_fusion",  # "enabled when --permute-fusion is added"
    "--moe-router-padding-for-fp8": "model.moe_router_padding_for_quantization",
}


def _code_span_flags(path: Path) -> dict[str, list[str]]:
    """The flags of every `...` code span of a markdown file, with their values."""
    flags: dict[str, list[str]] = {}
    for span in re.findall(r"`([^`]+)`", path.read_text()):
        current = None
        for token in shlex.split(span):
            if token.startswith("--"):
                current = token.rstrip(":")  # the guide writes "--mtp-num-layers: 1"
                flags[current] = []
            elif current:
                flags[current].append(token)
    return flags


def _check_flags(recipe, flags: dict[str, list[str]], field_of_flag: dict) -> None:
    unknown = sorted(set(flags) - set(field_of_flag))
    assert not unknown, f"flags without a recipe field: {unknown}"
    for flag, values in flags.items():
        target = field_of_flag[flag]
        if isinstance(target, tuple):
            assert _get(recipe, target[0]) == target[1], flag
            continue
        actual = _get(recipe, target)
        assert actual == _expected(actual, values), f"{flag} {values} vs {target}={actual!r}"


def test_h100_fp8_blockwise_has_every_seed001_optimisation():
    recipe = recipe_of(recipes.get("h100_fp8_blockwise"))
    flags = _code_span_flags(SEED001)
    assert len(flags) >= 25  # the guide's whole list was read
    _check_flags(recipe, flags, SEED001_FIELD_OF_FLAG)


def test_h100_fp8_blockwise_cluster_is_the_guides_launch():
    """[moe-zoo] run.sh, the guide's line: "A2A_OVERLAP=1 PP=8 VPP=4 TP=2 EP=64 NNODES=128 GBS=8192"."""
    r = recipe_of(recipes.get("h100_fp8_blockwise"))
    m = r.model
    sizes = (
        m.pipeline_model_parallel_size,
        m.virtual_pipeline_model_parallel_size,
        m.tensor_model_parallel_size,
    )
    assert sizes + (m.expert_model_parallel_size, r.launch.num_nodes, r.train.global_batch_size) == (
        8,
        4,
        2,
        64,
        128,
        8192,
    )
    # A2A_OVERLAP=1 in sbatch_benchmarking.sh and DeepSeek-V3.yaml's ENV_VARS.
    assert r.env_vars["CUDA_DEVICE_MAX_CONNECTIONS"] == "32"
    assert r.env_vars["NVTE_FWD_LAYERNORM_SM_MARGIN"] == r.env_vars["NVTE_BWD_LAYERNORM_SM_MARGIN"] == "20"
    assert r.env_vars["TORCH_NCCL_AVOID_RECORD_STREAMS"] == "0"
    assert r.env_vars["NVTE_ALLOW_NONDETERMINISTIC_ALGO"] == "1"


def _markdown_rows(text: str) -> list[dict[str, str]]:
    """Every data row of every markdown table, keyed by its header (bold stripped)."""
    rows, header = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not set(line) <= set("|-: "):
            rows.append(dict(zip(header, cells, strict=True)))
    return rows


def test_bridge_default_matches_seed004():
    text = SEED004.read_text()
    r = recipe_of(recipes.get("bridge_default_1024gpu"))
    m = r.model
    (row,) = [row for row in _markdown_rows(text) if row["Model"] == "DeepSeek-V3"]
    assert m.tensor_model_parallel_size == int(row["TP"]) and m.pipeline_model_parallel_size == int(row["PP"])
    assert m.expert_model_parallel_size == int(row["EP"])
    assert str(m.virtual_pipeline_model_parallel_size) == row["VP"]
    assert (r.launch.num_nodes, r.launch.num_gpus) == (int(row["Nodes"]), int(row["Total GPUs"]))

    example = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    call = next(n for n in ast.walk(ast.parse(example)) if isinstance(n, ast.Call) and n.keywords)
    kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    assert (r.train.train_iters, r.train.global_batch_size, m.seq_length) == (
        kwargs["train_iters"],
        kwargs["global_batch_size"],
        kwargs["seq_length"],
    )
    assert (m.mtp_num_layers, m.mtp_loss_scaling_factor) == (
        kwargs["mtp_num_layers"],
        kwargs["mtp_loss_scaling_factor"],
    )
    assert "**Sequence Parallel**: Enabled by default" in text and m.sequence_parallel
    assert "**MoE Permute Fusion**" in text and m.moe_permute_fusion
    assert "FP32 master weights with BF16 gradients and optimizer states" in text
    o = r.optimizer
    assert (o.main_params_dtype, o.main_grads_dtype, o.exp_avg_dtype, o.exp_avg_sq_dtype) == (
        "fp32",
        "bf16",
        "bf16",
        "bf16",
    )


def test_bridge_default_follows_bridges_code_where_its_docs_differ():
    """The page says selective recompute by default; Bridge 0.6.2's code sets none (docs/sources.md)."""
    assert "**Selective Recomputation**: Enabled by default" in SEED004.read_text()
    assert recipe_of(recipes.get("bridge_default_1024gpu")).model.recompute_granularity is None
    if not importable("megatron.bridge"):  # find_spec raises without the megatron package
        pytest.skip("the train extra holds Bridge's recipe code")
    spec = importlib.util.find_spec("megatron.bridge")
    code = Path(
        spec.submodule_search_locations[0], "recipes", "deepseek", "h100", "deepseek_v3.py"
    ).read_text()
    bf16_config = code.split("def deepseek_v3_pretrain_1024gpu_h100_bf16_config")[1].split("\ndef ")[0]
    assert "cfg.model.recompute_granularity = None" in bf16_config


SEED003_RECIPES = {"GB200": "gb200_bf16_256gpu", "B200": "b200_bf16_256gpu", "H100": "h100_bf16_512gpu"}


def _seed003_tables() -> dict[str, dict[str, str]]:
    """GPU type -> its table row, from the '## <GPU>' sections."""
    tables = {}
    for gpu, body in re.findall(r"^## (\w+)\n(.*?)(?=^## |\Z|^\*\*)", SEED003.read_text(), re.S | re.M):
        (row,) = _markdown_rows(body)
        tables[gpu] = row
    return tables


def _seed003_defaults() -> dict[str, str]:
    """Optional variable -> the text in its '(default: ...)'."""
    return dict(re.findall(r"^- `(\w+)`: .*\(default: (.*)\)$", SEED003.read_text(), re.M))


@pytest.mark.parametrize("gpu", list(SEED003_RECIPES))
def test_torchtitan_baselines_match_seed003_tables(gpu, monkeypatch):
    for knob in recipes.torchtitan.KNOBS:
        monkeypatch.setenv(knob, "7")  # the fixed recipes ignore the environment
    row = _seed003_tables()[gpu]
    r = recipe_of(recipes.get(SEED003_RECIPES[gpu]))
    m = r.model
    assert (r.launch.gpu_type, r.launch.num_gpus, m.seq_length) == (
        gpu.lower(),
        int(row["GPUs"]),
        int(row["SeqLen"]),
    )
    assert (r.train.train_iters, resolve(r).sizes.dp) == (int(row["Steps"]), int(row["DP"]))
    assert (m.tensor_model_parallel_size, m.expert_model_parallel_size, m.pipeline_model_parallel_size) == (
        int(row["TP"]),
        int(row["EP"]),
        int(row["PP"]),
    )
    # TorchTitan's MBS is its local batch per DP rank; Megatron runs it as pipeline micro-batches of one.
    assert r.train.global_batch_size == int(row["GBS"]) == int(row["MBS"]) * int(row["DP"]) * int(row["GA"])
    assert (
        r.train.micro_batch_size == 1 and r.mixed_precision.fp8_recipe is None and row["Precision"] == "BF16"
    )


def test_torchtitan_knob_defaults_are_seed003s(monkeypatch, tmp_path):
    defaults = _seed003_defaults()
    for knob in recipes.torchtitan.KNOBS:
        monkeypatch.delenv(knob, raising=False)
    assert defaults["DATA_PARALLEL_SHARD_DEGREE"] == "64 for H100, 32 for B200, 32 for GB200"
    assert recipes.torchtitan.DEFAULT_DP_SHARD == {"h100": 64, "b200": 32, "gb200": 32}
    per_gpu = {"h100": "8", "b200": "8", "gb200": "4"}
    assert defaults["GPUS_PER_NODE"] == "8 for H100/B200, 4 for GB200"
    (tmp_path / "datasets" / "c4").mkdir(parents=True)
    (tmp_path / "datasets" / "c4" / "c4-train.en_0_text_document.idx").touch()
    for gpu in ("h100", "b200", "gb200"):
        r = recipe_of(
            recipes.torchtitan.torchtitan_bf16_from_env({"GPU_TYPE": gpu, "LLMB_INSTALL": str(tmp_path)})
        )
        m = r.model
        assert str(r.launch.gpus_per_node) == per_gpu[gpu]
        assert str(m.expert_model_parallel_size) == defaults["EXPERT_PARALLEL_DEGREE"]
        assert str(m.pipeline_model_parallel_size) == defaults["PIPELINE_PARALLEL_DEGREE"]
        assert (
            str(m.seq_length) == defaults["SEQ_LEN"]
            and str(r.train.train_iters) == defaults["TRAINING_STEPS"]
        )
        assert str(r.train.global_batch_size // resolve(r).sizes.dp) == defaults["LOCAL_BATCH_SIZE"]
        assert defaults["DATASET_PATH"] == "`$LLMB_INSTALL/datasets/c4`"
        assert r.dataset.data_paths == [str(tmp_path / "datasets" / "c4" / "c4-train.en_0_text_document")]
        # "448 for H100/B200, 224 for GB200": the first rank of the last pipeline stage. On B200's 256
        # GPUs that is 224, as [titan-launch] sets it; rank 448 does not exist there.
        assert defaults["LOG_RANK"] == "448 for H100/B200, 224 for GB200"
        assert r.logger.log_rank == {"h100": 448, "b200": 224, "gb200": 224}[gpu] < r.launch.num_gpus


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
        "LOG_RANK": "1000",
        "ENABLE_PROFILE": "true",
    }
    for knob in recipes.torchtitan.KNOBS:
        monkeypatch.delenv(knob, raising=False)
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
    assert r.profiling.use_pytorch_profiler and r.logger.log_rank == 1000


def test_torchtitan_knobs_leave_the_fixed_recipes_alone(monkeypatch):
    monkeypatch.setenv("GPU_TYPE", "gb200")
    monkeypatch.setenv("JOB_TOTAL_GPUS", "1024")
    assert recipe_of(recipes.get("h100_bf16_512gpu")).launch.num_gpus == 512
    assert recipe_of(recipes.get("b200_bf16_256gpu")).launch.gpu_type == "b200"


def test_seed003_custom_parallelism_example_is_refused_with_the_reason():
    example = re.search(r"```bash\n(.*?)```", SEED003.read_text(), re.S).group(1)
    env = dict(re.findall(r"(\w+)=(\S+)", example))
    assert env == {
        "GPU_TYPE": "h100",
        "JOB_TOTAL_GPUS": "512",
        "DATA_PARALLEL_SHARD_DEGREE": "32",
        "EXPERT_PARALLEL_DEGREE": "16",
        "PIPELINE_PARALLEL_DEGREE": "4",
    }
    with pytest.raises(RecipeError) as err:
        recipes.torchtitan.torchtitan_bf16_from_env(env)
    assert err.value.path == "DATA_PARALLEL_SHARD_DEGREE"
    assert "TorchTitan would refuse this mesh" in str(err.value) and "DATA_PARALLEL_SHARD_DEGREE=128" in str(
        err.value
    )
    recipe = recipe_of(
        recipes.torchtitan.torchtitan_bf16_from_env({**env, "DATA_PARALLEL_SHARD_DEGREE": "128"})
    )
    assert (resolve(recipe).sizes.dp, recipe.model.expert_model_parallel_size) == (128, 16)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GPU_TYPE": "a100"}, "GPU_TYPE: got 'a100'; allowed: h100, b200, gb200"),
        (
            {"GPU_TYPE": "h100", "JOB_TOTAL_GPUS": "512", "DATA_PARALLEL_SHARD_DEGREE": "32"},
            "DATA_PARALLEL_SHARD_DEGREE: 32 x PIPELINE_PARALLEL_DEGREE 8 must equal JOB_TOTAL_GPUS 512",
        ),
        (
            {"GPU_TYPE": "h100", "JOB_TOTAL_GPUS": "1024"},
            "DATA_PARALLEL_SHARD_DEGREE: 64 x PIPELINE_PARALLEL_DEGREE 8 must equal JOB_TOTAL_GPUS 1024",
        ),
        ({"GPU_TYPE": "h100", "TRAINING_STEPS": "many"}, "TRAINING_STEPS: expected an integer, got 'many'"),
        (
            {"GPU_TYPE": "gb200", "JOB_TOTAL_GPUS": "258"},
            "JOB_TOTAL_GPUS: 258 is not a multiple of GPUS_PER_NODE=4",
        ),
        ({"GPU_TYPE": "b200", "EXPERT_PARALLEL_DEGREE": "0"}, "EXPERT_PARALLEL_DEGREE: must be >= 1, got 0"),
        ({"GPU_TYPE": "b200", "EXPERT_PARALLEL_DEGREE": "64"}, "EXPERT_PARALLEL_DEGREE: 64 does not divide"),
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


def test_log_rank_off_the_loss_stage_is_refused():
    env = {"GPU_TYPE": "h100", "LOG_RANK": "0"}
    with pytest.raises(RecipeError, match=r"^logger.log_rank: 0 does not hold the loss: .* ranks 448..511"):
        recipe_of(recipes.torchtitan.torchtitan_bf16_from_env(env))


RECIPE_MODULES = sorted((ROOT / "dsv3_recipes" / "recipes").glob("*.py"))
# An assignment to a recipe field inside a factory (r.model.x = ..., m.x = ..., task.recipe.x = ...).
ASSIGNMENT = re.compile(r"^\s+(?:r|m|t|o|s|d|c|lg|mp|task\.recipe)\.[\w.]+ = ")
TAG = re.compile(r"(?<!ignore)\[([a-z]+(?:-[a-z0-9]+)+)\]")  # [mcore-gb200], not type: ignore[arg-type]


def _sources() -> set[str]:
    return set(re.findall(r"^\| `\[([a-z0-9-]+)\]` \|", (ROOT / "docs" / "sources.md").read_text(), re.M))


@pytest.mark.parametrize("path", RECIPE_MODULES, ids=lambda p: p.name)
def test_each_recipe_field_says_where_it_comes_from(path):
    """Every field a factory sets carries a comment (on its line, or heading its block); no bare seed."""
    lines = path.read_text().splitlines()
    unexplained = []
    for i, line in enumerate(lines):
        if not ASSIGNMENT.match(line) or "#" in line:
            continue
        block = i
        while block > 0 and lines[block - 1].strip() and not lines[block - 1].lstrip().startswith("#"):
            block -= 1
        if block == 0 or not lines[block - 1].lstrip().startswith("#"):
            unexplained.append(f"{path.name}:{i + 1}: {line.strip()}")
    assert not unexplained, "\n".join(unexplained)
    assert not re.search(r"seed 00\d", path.read_text(), re.I), "name the source by its docs/sources.md tag"


def test_every_source_tag_is_listed_in_docs_sources():
    sources = _sources()
    assert len(sources) >= 10
    used: dict[str, set[str]] = {}
    for path in [*ROOT.joinpath("dsv3_recipes").rglob("*.py"), *ROOT.joinpath("experiments").rglob("*.sh")]:
        for tag in TAG.findall(path.read_text()):
            used.setdefault(tag, set()).add(path.name)
    assert used, "no source tags found"
    unknown = {tag: files for tag, files in used.items() if tag not in sources}
    assert not unknown, f"tags missing from docs/sources.md: {unknown}"
    # Every 671B recipe module names its sources.
    for name in ("gb200.py", "h100.py", "torchtitan.py", "mlperf.py"):
        assert TAG.search((ROOT / "dsv3_recipes" / "recipes" / name).read_text()), name
    assert fdl.build(recipes.get("gb200_mxfp8_256gpu").recipe).name == "gb200_mxfp8_256gpu"
