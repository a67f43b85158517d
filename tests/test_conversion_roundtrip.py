"""HF -> Megatron -> HF, and Megatron's logits against transformers', on CPU with tiny DeepSeek-V3
checkpoints, through the real conversion tasks.

Megatron-Core 0.19.2 and Megatron-Bridge 0.6.2 cannot build, save or run DeepSeek-V3 without CUDA at
places unrelated to the weight conversion. The ``megatron_on_cpu`` fixture replaces exactly those:

1. ``torch.cuda.current_device()`` -> "cpu": MLA's YaRN RoPE tables (multi_latent_attention.py:190
   does not pass ``use_cpu_initialization``) and the MoE router's expert-bias buffers (moe/router.py:181)
   are allocated on it unconditionally, and the router moves its weights there (router.py:98).
2. ``torch.cuda.get_rng_state()`` -> the CPU state: Bridge's checkpoint save records it even with
   ``save_rng=False`` (training/checkpointing.py:491).
3. ``torch.cuda.synchronize()`` -> no-op: the dist-checkpoint writer calls it
   (dist_checkpointing/strategies/filesystem_async.py:248).
4. TE needs CUDA, so the local layer spec; its ``DotProductAttention`` takes no ``k_channels`` /
   ``v_channels``, which MLA passes (multi_latent_attention.py:207), and assumes equal query and value
   widths: a causal scaled-dot-product attention takes its place (it holds no weights).
5. Bridge builds the MTP block with ``use_transformer_engine=True`` hard-coded (gpt_provider.py:376):
   built with the local spec instead.
6. DeepSeekV3Bridge.provider_bridge picks GPU-only options: here the local spec, no fused kernels
   (gradient-accumulation fusion needs apex/TE, permute fusion and grouped GEMM need TE), the allgather
   dispatcher (alltoall creates a CUDA stream at construction, token_dispatcher.py:469) and so no
   shared-expert overlap. These are saved in the checkpoint's run_config.yaml, so export reloads alike.
7. The router's gating GEMM goes through TE whenever TE imports (moe/moe_utils.py:1326): torch here.

The weight mapping, FP8 dequantization, torch_dist save/load, HF export and the forward pass outside
attention are Megatron-Bridge's and Megatron-Core's, unchanged. On a machine with a GPU the fixture
also hides it, so these tests take the same CPU path everywhere.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest

pytest.importorskip("megatron.bridge", reason="needs the train extra (uv sync --extra train)")

import torch  # noqa: E402

from conversion import tasks  # noqa: E402
from conversion.selfcheck import hf_greedy, hf_weights, mismatched_tensors  # noqa: E402
from conversion.tiny import is_fp8_weight, make_tiny_checkpoint, quantize_fp8_blockwise  # noqa: E402
from dsv3_recipes.recipe.schema import RecipeError  # noqa: E402


def _cpu_provider_bridge(original):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec

    def provider_bridge(self, hf_pretrained):
        provider = original(self, hf_pretrained)
        provider.transformer_layer_spec = partial(get_gpt_decoder_block_spec, use_transformer_engine=False)
        for fused in (
            "gradient_accumulation_fusion",
            "moe_permute_fusion",
            "moe_grouped_gemm",
            "bias_activation_fusion",
            "bias_dropout_fusion",
            "masked_softmax_fusion",
            "persist_layer_norm",
            "cross_entropy_loss_fusion",
            "moe_shared_expert_overlap",
        ):
            setattr(provider, fused, False)
        provider.moe_token_dispatcher_type = "allgather"
        return provider

    return provider_bridge


@pytest.fixture(scope="module")
def megatron_on_cpu():
    from megatron.bridge.models.deepseek.deepseek_v3_bridge import DeepSeekV3Bridge
    from megatron.core.models import backends
    from megatron.core.models.gpt import gpt_layer_specs
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.moe import moe_utils

    class MLACoreAttention(DotProductAttention):
        """Causal softmax attention for MLA's query/key width != value width."""

        def __init__(self, *args, k_channels=None, v_channels=None, **kwargs):
            super().__init__(*args, **kwargs)

        def forward(self, query, key, value, attention_mask, **kwargs):
            q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [s, b, h, d] -> [b, h, s, d]
            out = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=self.softmax_scale
            )
            return out.permute(2, 0, 1, 3).flatten(2)  # [s, b, h * d_v]

    mtp_block_spec = gpt_layer_specs.get_gpt_mtp_block_spec
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "is_available", lambda: False)
        mp.setattr(torch.cuda, "current_device", lambda: "cpu")
        mp.setattr(torch.cuda, "get_rng_state", lambda *a, **k: torch.get_rng_state())
        mp.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
        mp.setattr(moe_utils, "te_general_gemm", None)
        mp.setattr(backends.LocalSpecProvider, "core_attention", lambda self: MLACoreAttention)
        mp.setattr(
            gpt_layer_specs,
            "get_gpt_mtp_block_spec",
            lambda config, spec, use_transformer_engine, **kw: mtp_block_spec(config, spec, False, **kw),
        )
        mp.setattr(
            DeepSeekV3Bridge, "provider_bridge", _cpu_provider_bridge(DeepSeekV3Bridge.provider_bridge)
        )
        yield


@pytest.fixture(scope="module")
def imported(megatron_on_cpu, tmp_path_factory) -> Path:
    """A tiny BF16 checkpoint in ``hf/`` and its import in ``megatron/``."""
    root = tmp_path_factory.mktemp("bf16")
    make_tiny_checkpoint(root / "hf")
    tasks.import_hf(str(root / "hf"), str(root / "megatron"))
    return root


def test_bf16_round_trip_is_bit_exact(imported, tmp_path):
    out = tmp_path / "exported"
    tasks.export_hf(str(imported / "megatron"), str(out), hf_reference=str(imported / "hf"))
    source, exported = hf_weights(imported / "hf"), hf_weights(out)
    assert {"model.layers.3.embed_tokens.weight", "model.layers.3.mlp.experts.15.up_proj.weight"} <= set(
        source
    )
    assert mismatched_tensors(source, exported) == []  # every tensor, the MTP layer's shared copies included
    assert (imported / "megatron" / "iter_0000000" / "run_config.yaml").is_file()
    assert not list(tmp_path.glob("*.partial")) and not list(imported.glob("*.partial"))
    config = json.loads((out / "config.json").read_text())
    assert (config["model_type"], config["num_nextn_predict_layers"]) == ("deepseek_v3", 1)
    assert (out / "tokenizer.json").is_file()


def test_verify_on_cpu_matches_transformers(imported, tmp_path):
    hf, megatron = str(imported / "hf"), str(imported / "megatron")
    report = tasks.verify(hf, megatron, report_path=str(tmp_path / "v.json"))
    assert report == json.loads((tmp_path / "v.json").read_text())
    assert report["passed"] and report["positions"] == 2 * 64
    assert report["mean_rel_error"] <= 0.01 and report["top1_agreement"] >= 0.95
    with pytest.raises(tasks.VerifyFailed, match=r"mean_rel_error [0-9.e-]+ \(bound 0.0\)"):
        tasks.verify(hf, megatron, max_mean_rel_error=0.0, report_path=str(tmp_path / "failed.json"))
    assert not json.loads((tmp_path / "failed.json").read_text())["passed"]


def test_greedy_generation_on_cpu_matches_transformers(imported):
    hf, megatron = str(imported / "hf"), str(imported / "megatron")
    generated = tasks.generate(hf, megatron, prompt="Hello, DeepSeek", max_new_tokens=6)
    assert generated == hf_greedy(hf, "Hello, DeepSeek", max_new_tokens=6)


def test_a_model_without_mtp_exports_without_the_mtp_layer(imported, tmp_path):
    """A model trained with MTP off, exported against the MTP-carrying checkpoint it came from."""
    make_tiny_checkpoint(tmp_path / "no-mtp", num_nextn_predict_layers=0)  # same seed: same main weights
    tasks.import_hf(str(tmp_path / "no-mtp"), str(tmp_path / "megatron"))
    tasks.export_hf(str(tmp_path / "megatron"), str(tmp_path / "out"), hf_reference=str(imported / "hf"))
    reference = hf_weights(imported / "hf")
    without_mtp = {name: t for name, t in reference.items() if not name.startswith("model.layers.3.")}
    assert len(without_mtp) < len(reference)
    assert mismatched_tensors(without_mtp, hf_weights(tmp_path / "out")) == []
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_nextn_predict_layers"] == 0


def test_export_refuses_a_reference_of_another_architecture(imported, tmp_path):
    make_tiny_checkpoint(tmp_path / "two-layers", num_hidden_layers=2)
    with pytest.raises(
        RecipeError, match="^--hf-reference: num_layers is 2 in the reference but 3 in the Megatron"
    ):
        tasks.export_hf(
            str(imported / "megatron"), str(tmp_path / "out"), hf_reference=str(tmp_path / "two-layers")
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two-layers"]


# Rounding the exact product to BF16 (8 significant bits): at most half an ulp, 2^-8 relative; going
# through float32 first (Bridge multiplies in float32) adds at most 2^-24.
BF16_ROUNDING = 2**-8 + 2**-24


def _dequantized_float64(weight: torch.Tensor, scale_inv: torch.Tensor, block: int = 128) -> torch.Tensor:
    scales = scale_inv.double().repeat_interleave(block, 0).repeat_interleave(block, 1)
    return weight.double() * scales[: weight.shape[0], : weight.shape[1]]


def test_fp8_import_dequantizes_to_bf16(megatron_on_cpu, tmp_path):
    megatron, out = tmp_path / "megatron", tmp_path / "exported"
    source = make_tiny_checkpoint(tmp_path / "hf", fp8=True)
    tasks.import_hf(str(tmp_path / "hf"), str(megatron))
    tasks.export_hf(str(megatron), str(out), hf_reference=str(tmp_path / "hf"))
    exported = hf_weights(out)
    fp8_names = [name for name in source if is_fp8_weight(name)]
    assert fp8_names and all(source[name].dtype == torch.float8_e4m3fn for name in fp8_names)
    assert set(exported) == {name for name in source if not name.endswith("_scale_inv")}
    for name in fp8_names:
        reference = _dequantized_float64(source[name], source[name + "_scale_inv"])
        assert exported[name].dtype == torch.bfloat16, name
        torch.testing.assert_close(exported[name].double(), reference, rtol=BF16_ROUNDING, atol=0)
    unscaled = source[fp8_names[0]].to(torch.bfloat16)  # what a plain cast, ignoring the scales, gives
    assert not torch.allclose(exported[fp8_names[0]].double(), unscaled.double(), rtol=0.1)
    unquantized = {
        name: t for name, t in source.items() if name not in fp8_names and "_scale_inv" not in name
    }
    assert mismatched_tensors(unquantized, {name: exported[name] for name in unquantized}) == []
    assert "quantization_config" not in json.loads((out / "config.json").read_text())


def test_bridge_fp8_dequantization_matches_float64():
    from megatron.bridge.models.conversion.quantization_utils import dequantize_fp8_blockwise

    generator = torch.Generator().manual_seed(0)
    shape = (300, 200)  # 3 x 2 blocks, the last ones partial
    fp8 = (torch.randn(shape, generator=generator) * 100).to(torch.float8_e4m3fn)
    scale_inv = torch.rand((3, 2), generator=generator) * 1e-2 + 1e-4
    reference = _dequantized_float64(fp8, scale_inv)
    as_float32 = dequantize_fp8_blockwise(fp8, scale_inv, dtype=torch.float32)
    torch.testing.assert_close(as_float32.double(), reference, rtol=2**-24, atol=0)
    as_bf16 = dequantize_fp8_blockwise(fp8, scale_inv)
    torch.testing.assert_close(as_bf16.double(), reference, rtol=BF16_ROUNDING, atol=0)


def test_tiny_fp8_quantization_round_trips_within_e4m3_precision():
    weight = torch.randn(300, 200, generator=torch.Generator().manual_seed(1))
    fp8, scale_inv = quantize_fp8_blockwise(weight)
    assert scale_inv.shape == (3, 2) and fp8.dtype == torch.float8_e4m3fn
    restored = _dequantized_float64(fp8, scale_inv)
    # e4m3 keeps 3 mantissa bits: relative error <= 2^-4 of each value (normal range)
    torch.testing.assert_close(restored, weight.double(), rtol=2**-4, atol=scale_inv.max().item() * 2**-9)


def test_import_refuses_a_non_empty_output(tmp_path):
    make_tiny_checkpoint(tmp_path / "hf")
    (tmp_path / "megatron").mkdir()
    (tmp_path / "megatron" / "keep.txt").write_text("user data")
    with pytest.raises(RecipeError, match="--megatron-path: .* already exists"):
        tasks.import_hf(str(tmp_path / "hf"), str(tmp_path / "megatron"))
    assert [p.name for p in (tmp_path / "megatron").iterdir()] == ["keep.txt"]
