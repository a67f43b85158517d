"""The model provider is Megatron-Bridge's DeepSeek-V3 mapping (DeepSeekV3Bridge.provider_bridge) of a
Hugging Face config written from the recipe, with the recipe's own fields on top, built without network."""

import dataclasses
import functools
import socket

import pytest

pytest.importorskip("megatron.bridge", reason="needs the train extra")

from megatron.bridge.models.conversion.auto_bridge import AutoBridge  # noqa: E402

from dsv3_recipes import recipes  # noqa: E402
from dsv3_recipes.launch.submit import build_task, recipe_of  # noqa: E402
from dsv3_recipes.recipe.resolve import resolve  # noqa: E402
from dsv3_recipes.train.container import hf_config, model_provider, recipe_choices  # noqa: E402

# torchtitan_bf16 reads GPU_TYPE from the environment; its named variants are in the list. Each recipe
# also shrunk to one GPU: the shrunk models are the ones that run on a GPU here, and only a narrower
# model shows a head count that HF's defaults do not divide.
NAMES = [n for n in recipes.RECIPES if n != "torchtitan_bf16"]
CASES = [(n, gpus) for n in NAMES for gpus in (None, 1)]


def recipe_for(name: str, gpus: int | None):
    task = recipes.get(name)
    return recipe_of(task if gpus is None else recipes.shrink(task, gpus=gpus, gpu_type="h200"))


# Recipe fields the HF config carries, which Bridge's mapping alone must already give.
ARCHITECTURE = (
    "num_layers",
    "hidden_size",
    "ffn_hidden_size",
    "num_attention_heads",
    "q_lora_rank",
    "kv_lora_rank",
    "qk_head_dim",
    "qk_pos_emb_head_dim",
    "v_head_dim",
    "num_moe_experts",
    "moe_ffn_hidden_size",
    "moe_shared_expert_intermediate_size",
    "moe_router_topk",
    "moe_router_num_groups",
    "moe_router_group_topk",
    "moe_router_topk_scaling_factor",
    "vocab_size",
    "seq_length",
    "rotary_base",
    "rotary_scaling_factor",
    "original_max_position_embeddings",
    "mscale",
    "mscale_all_dim",
    "init_method_std",
    "attention_dropout",
    "mtp_num_layers",
)
# DeepSeek-V3 choices Bridge's mapping fixes and every recipe states the same way.
DSV3_FIXED = (
    "moe_router_score_function",
    "moe_router_enable_expert_bias",
    "moe_router_pre_softmax",
    "moe_router_load_balancing_type",
    "moe_router_dtype",
    "qk_layernorm",
    "hidden_dropout",
)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection attempt fails the test: the provider must come from local data only."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def refuse(self, address):
        raise AssertionError(f"network access to {address} while building a model provider")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def bridge_mapping(recipe):
    """Bridge's provider for the recipe's HF config, before the recipe's fields are applied."""
    return AutoBridge.from_hf_config(hf_config(recipe.model)).to_megatron_provider(load_weights=False)


def same(a, b) -> bool:
    """Equal, with layer-spec partials (a new object per provider) compared by function and arguments."""
    if isinstance(a, functools.partial) and isinstance(b, functools.partial):
        return (a.func, a.args, a.keywords) == (b.func, b.args, b.keywords)
    return a is b or a == b


@pytest.mark.parametrize(("name", "gpus"), CASES)
def test_bridge_maps_the_recipe_architecture(name, gpus):
    recipe = recipe_for(name, gpus)
    m, provider = recipe.model, bridge_mapping(recipe)
    expected = {f: getattr(m, f) for f in (*ARCHITECTURE, *DSV3_FIXED)}
    dense = m.first_k_dense_replace
    expected["moe_layer_freq"] = [0] * dense + [1] * (m.num_layers - dense)
    expected["layernorm_epsilon"] = m.norm_epsilon
    expected["num_query_groups"] = m.num_attention_heads  # MLA: one key/value per head, as in DSV3
    assert {f: getattr(provider, f) for f in expected} == expected
    assert (provider.multi_latent_attention, provider.normalization, provider.gated_linear_unit) == (
        True,
        "RMSNorm",
        True,
    )
    assert (provider.add_bias_linear, provider.share_embeddings_and_output_weights) == (False, False)
    assert (provider.beta_fast, provider.beta_slow) == (32.0, 1.0)  # YaRN as in DeepSeek-V3's config.json


@pytest.mark.parametrize(("name", "gpus"), CASES)
def test_provider_is_bridges_but_for_the_recipe_fields(name, gpus):
    recipe = recipe_for(name, gpus)
    resolved = resolve(recipe)
    provider, bridge, choices = model_provider(resolved), bridge_mapping(recipe), recipe_choices(resolved)
    fields = [f.name for f in dataclasses.fields(provider)]
    assert set(choices) <= set(fields), "a recipe field with no provider field of its name"
    for field in fields:
        want = choices[field] if field in choices else getattr(bridge, field)
        assert same(getattr(provider, field), want), field


def test_recipe_fields_win_over_bridges_dsv3_choices():
    """Where a recipe differs from Bridge's DeepSeek-V3 defaults, the recipe's value is the one used."""
    recipe = recipe_of(recipes.get("mlperf_proxy_1gpu"))
    bridge, provider = bridge_mapping(recipe), model_provider(resolve(recipe))
    assert (bridge.moe_aux_loss_coeff, provider.moe_aux_loss_coeff) == (1e-4, 0.01)  # the MLPerf rule
    assert (bridge.make_vocab_size_divisible_by, provider.make_vocab_size_divisible_by) == (1280, 128)
    assert (bridge.gradient_accumulation_fusion, provider.gradient_accumulation_fusion) == (True, False)
    assert (bridge.moe_token_dispatcher_type, provider.moe_token_dispatcher_type) == ("alltoall", "allgather")


def test_the_embedding_init_std_reaches_megatron():
    """model.embedding_init_method_std is Megatron's: unset, the embedding takes init_method_std (as
    DeepSeek-V3); set, TransformerConfig draws the embedding with it (TorchTitan's N(0, 1);
    docs/routing.md)."""
    shipped = model_provider(resolve(recipe_of(recipes.get("proxy_1gpu"))))
    assert shipped.embedding_init_method_std is None
    provider = model_provider(
        resolve(recipe_of(build_task("proxy_1gpu", ["model.embedding_init_method_std=1.0"])))
    )
    provider.finalize()  # Megatron's __post_init__: the init methods from their stds
    assert provider.embedding_init_method_std == 1.0 and provider.init_method_std == 0.006
    assert provider.embedding_init_method.keywords["std"] == 1.0
