"""Train side on CPU: every recipe becomes a Megatron-Bridge ConfigContainer that Bridge's own
runtime validation accepts (the same `runtime_config_update` that `pretrain` runs first)."""

import types

import pytest

pytest.importorskip("megatron.bridge", reason="needs the train extra")

import torch  # noqa: E402
from megatron.bridge.training.config import runtime_config_update  # noqa: E402

from dsv3_recipes import recipes  # noqa: E402
from dsv3_recipes.launch.submit import recipe_of  # noqa: E402
from dsv3_recipes.recipe.resolve import resolve  # noqa: E402
from dsv3_recipes.train.container import to_config_container  # noqa: E402

# Bridge asks the GPU's compute capability to validate flex dispatchers: answer as the target GPU would.
CAPABILITY = {
    "h100": (9, "NVIDIA H100 80GB HBM3"),
    "h200": (9, "NVIDIA H200"),
    "b200": (10, "NVIDIA B200"),
    "gb200": (10, "NVIDIA GB200"),
    "gb300": (10, "NVIDIA GB300"),
}


@pytest.fixture
def as_target_gpu(monkeypatch):
    def use(gpu_type: str, world_size: int) -> None:
        major, name = CAPABILITY[gpu_type]
        props = types.SimpleNamespace(major=major, minor=0, name=name)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *_: props)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setenv("WORLD_SIZE", str(world_size))

    return use


@pytest.mark.parametrize("name", [n for n in recipes.RECIPES if n != "torchtitan_bf16"])
def test_recipe_passes_bridge_validation(name, as_target_gpu, monkeypatch):
    recipe = recipe_of(recipes.get(name))
    if not recipe.dataset.mock:
        recipe.dataset.data_paths = recipe.dataset.data_paths or ["/data/c4_text_document"]
        if recipe.mlperf.enabled:  # MLPerf evaluates on its own validation shard
            recipe.dataset.validation_paths = recipe.dataset.validation_paths or ["/data/c4_validation"]
    as_target_gpu(recipe.launch.gpu_type, recipe.launch.num_gpus)
    cfg = to_config_container(resolve(recipe))
    runtime_config_update(cfg)

    m, model = recipe.model, cfg.model
    assert model.num_layers == m.num_layers and model.num_moe_experts == m.num_moe_experts
    assert model.moe_layer_freq == [0] * m.first_k_dense_replace + [1] * (
        m.num_layers - m.first_k_dense_replace
    )
    assert (model.q_lora_rank, model.kv_lora_rank, model.qk_pos_emb_head_dim) == (
        m.q_lora_rank,
        m.kv_lora_rank,
        m.qk_pos_emb_head_dim,
    )
    assert model.moe_router_score_function == "sigmoid" and model.moe_router_enable_expert_bias
    assert model.mtp_num_layers == m.mtp_num_layers
    assert cfg.data_parallel_size == resolve(recipe).sizes.dp
    assert cfg.train.global_batch_size == recipe.train.global_batch_size
    assert (
        cfg.optimizer.exp_avg_dtype
        == {"fp32": torch.float32, "bf16": torch.bfloat16}[recipe.optimizer.exp_avg_dtype]
    )
    assert getattr(cfg.dataset, "mock", False) == recipe.dataset.mock


def test_gc_eval_and_pipeline_dtype_reach_bridge_once(as_target_gpu):
    """Bridge's manual_gc_eval is a bool (the GC interval reached it once), and the pipeline dtype comes
    from the mixed-precision config alone, which Bridge copies onto the model."""
    recipe = recipe_of(recipes.get("proxy_2gpu_pp2"))
    as_target_gpu("h200", recipe.launch.num_gpus)
    cfg = to_config_container(resolve(recipe))
    assert cfg.train.manual_gc_eval is True
    runtime_config_update(cfg)
    assert cfg.model.pipeline_dtype is torch.bfloat16 is cfg.mixed_precision.pipeline_dtype
    recipe.mixed_precision.bf16 = False
    cfg = to_config_container(resolve(recipe))
    runtime_config_update(cfg)
    assert cfg.model.pipeline_dtype is torch.float32


def test_mxfp8_recipe_reaches_the_model(as_target_gpu):
    recipe = recipe_of(recipes.get("gb200_mxfp8_256gpu"))
    recipe.dataset.data_paths = ["/data/c4_text_document"]
    as_target_gpu("gb200", recipe.launch.num_gpus)
    cfg = to_config_container(resolve(recipe))
    runtime_config_update(cfg)
    assert (cfg.model.fp8, cfg.model.fp8_recipe) == ("e4m3", "mxfp8")
    assert cfg.ddp.fp8_param_gather and cfg.ddp.reuse_grad_buf_for_mxfp8_param_ag
    assert (cfg.model.moe_token_dispatcher_type, cfg.model.moe_flex_dispatcher_backend) == (
        "flex",
        "hybridep",
    )
    assert cfg.model.moe_flex_dispatcher_num_sms == 32
    assert cfg.model.sequence_parallel is False  # TP1: Megatron-LM drops SP, so does the translation
    assert cfg.dataset.blend is not None and cfg.dataset.split == "99,1,0"


def test_separate_validation_blend(as_target_gpu):
    recipe = recipe_of(recipes.get("proxy_1gpu"))
    recipe.dataset.mock = False
    recipe.dataset.data_paths = ["0.3", "/d/a_text_document", "0.7", "/d/b_text_document"]
    recipe.dataset.validation_paths = ["/d/valid_text_document"]
    as_target_gpu("h100", 1)
    cfg = to_config_container(resolve(recipe))
    runtime_config_update(cfg)
    train, valid, test = cfg.dataset.blend_per_split
    assert train == (["/d/a_text_document", "/d/b_text_document"], [0.3, 0.7])
    assert valid == (["/d/valid_text_document"], None) and test is None


def test_no_nan_check_flag_turns_off_both_checks(as_target_gpu):
    """--no-check-for-nan-in-loss-and-grad: the gradient check (DDP) and the loss one (rerun machine)."""
    recipe = recipe_of(recipes.get("proxy_1gpu"))
    as_target_gpu("h100", 1)
    assert recipe.train.check_for_nan_in_loss_and_grad is False
    cfg = to_config_container(resolve(recipe))
    runtime_config_update(cfg)
    assert cfg.ddp.check_for_nan_in_grad is False and cfg.rerun_state_machine.check_for_nan_in_loss is False
    recipe.train.check_for_nan_in_loss_and_grad = True
    cfg = to_config_container(resolve(recipe))
    assert cfg.ddp.check_for_nan_in_grad and cfg.rerun_state_machine.check_for_nan_in_loss


def test_mock_data_runs_with_null_tokenizer_offline(as_target_gpu, monkeypatch):
    """gb200_mxfp8_256gpu names a hub tokenizer; on mock data nothing is fetched (HF_HUB_OFFLINE=1)."""
    from megatron.bridge.training.tokenizers.tokenizer import build_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    task = recipes.get("gb200_mxfp8_256gpu")
    task.recipe.dataset.mock = True
    recipe = recipe_of(task)
    assert recipe.tokenizer.tokenizer_model == "unsloth/DeepSeek-V3"
    as_target_gpu("gb200", recipe.launch.num_gpus)
    cfg = to_config_container(resolve(recipe))
    runtime_config_update(cfg)
    assert (cfg.tokenizer.tokenizer_type, cfg.tokenizer.tokenizer_model) == ("NullTokenizer", None)
    assert build_tokenizer(cfg.tokenizer).vocab_size >= recipe.model.vocab_size


def test_scheduler_switches_reach_bridge(as_target_gpu):
    task = recipes.get("proxy_1gpu")
    task.recipe.scheduler.override_opt_param_scheduler = True
    recipe = recipe_of(task)
    as_target_gpu("h100", 1)
    cfg = to_config_container(resolve(recipe))
    runtime_config_update(cfg)
    assert cfg.scheduler.override_opt_param_scheduler and not cfg.scheduler.use_checkpoint_opt_param_scheduler


@pytest.mark.parametrize("name", ["proxy_1gpu", "bridge_default_1024gpu", "h100_fp8_blockwise"])
def test_precision_aware_optimizer_is_the_one_megatron_runs(name, as_target_gpu):
    """A BF16 recipe that asks for the precision-aware optimizer gets TE FusedAdam's master-weight path
    (Megatron's `use_precision_aware_optimizer_no_fp8_or_ds_fp8`); an FP8 recipe keeps its own recipe."""
    recipe = recipe_of(recipes.get(name))
    recipe.dataset.data_paths = recipe.dataset.data_paths or ["/data/c4_text_document"]
    as_target_gpu(recipe.launch.gpu_type, recipe.launch.num_gpus)
    cfg = to_config_container(resolve(recipe))
    runtime_config_update(cfg)
    fp8_recipe = recipe.mixed_precision.fp8_recipe
    assert cfg.optimizer.fp8_recipe == cfg.model.fp8_recipe == fp8_recipe
    assert cfg.optimizer.use_precision_aware_optimizer == recipe.optimizer.use_precision_aware_optimizer
    assert cfg.optimizer.use_precision_aware_optimizer_no_fp8_or_ds_fp8 == (
        recipe.optimizer.use_precision_aware_optimizer and fp8_recipe in (None, "delayed")
    )
