"""The dsv3::<part> profiler ranges: which Megatron-Core module is which part, and that a real torch.profiler
trace of a model with them lets kernel_profile tell expert from shared-expert GEMMs, backward included."""

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.bridge", reason="needs the train extra")

from dsv3_recipes.report import kernel_profile as kp  # noqa: E402
from dsv3_recipes.train.profile_ranges import ProfileRanges, part_of  # noqa: E402


def test_megatron_core_classes_map_to_their_parts():
    from megatron.core.models.common.embeddings.language_model_embedding import LanguageModelEmbedding
    from megatron.core.models.gpt.gpt_model import GPTModel
    from megatron.core.transformer.mlp import MLP
    from megatron.core.transformer.moe.experts import SequentialMLP, TEGroupedMLP
    from megatron.core.transformer.moe.moe_layer import MoELayer
    from megatron.core.transformer.moe.router import TopKRouter
    from megatron.core.transformer.moe.shared_experts import SharedExpertMLP
    from megatron.core.transformer.multi_latent_attention import MLASelfAttention
    from megatron.core.transformer.multi_token_prediction import MultiTokenPredictionBlock
    from megatron.core.transformer.transformer_block import TransformerBlock

    def part(cls, name="x"):
        return part_of(name, cls.__new__(cls))  # the class is what counts; no need to build one

    assert {
        cls.__name__: part(cls)
        for cls in (
            TEGroupedMLP,
            SequentialMLP,
            SharedExpertMLP,
            MLP,
            TopKRouter,
            MoELayer,
            MLASelfAttention,
            LanguageModelEmbedding,
            TransformerBlock,
            MultiTokenPredictionBlock,
            GPTModel,
        )
    } == {
        "TEGroupedMLP": "experts",
        "SequentialMLP": "experts",
        "SharedExpertMLP": "shared_expert",  # an MLP subclass, named before MLP
        "MLP": "dense_mlp",
        "TopKRouter": "router",
        "MoELayer": "moe",
        "MLASelfAttention": "attention",
        "LanguageModelEmbedding": "embedding",
        "TransformerBlock": "decoder",
        "MultiTokenPredictionBlock": "mtp",
        "GPTModel": "model",
    }
    assert part_of("module.module.output_layer", torch.nn.Linear(2, 2)) == "output_layer"
    assert part_of("module.decoder.layers.0.self_attention.linear_proj", torch.nn.Linear(2, 2)) is None


# Stand-ins with Megatron-Core's class names (part_of goes by class names).
class TEGroupedMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(x)


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(x)


class SharedExpertMLP(MLP):
    pass


class TopKRouter(torch.nn.Module):
    def forward(self, x):
        return torch.softmax(x, dim=-1)


class MoELayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.router, self.experts, self.shared_experts = TopKRouter(), TEGroupedMLP(), SharedExpertMLP()

    def forward(self, x):
        probs = self.router(x)
        return self.experts(x * probs) + self.shared_experts(x)


class GPTModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.moe, self.output_layer = MoELayer(), torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.output_layer(self.moe(x)).logsumexp(dim=-1).sum()


def test_ranges_only_while_the_profiler_records(monkeypatch):
    model = GPTModel()
    x = torch.randn(4, 8)
    expected = model(x)
    ranges = ProfileRanges.of_model([model])
    assert ranges.parts == {
        "experts": 1,
        "shared_expert": 1,
        "router": 1,
        "moe": 1,
        "model": 1,
        "output_layer": 1,
    }
    opened = []
    real = torch.autograd.profiler.record_function
    monkeypatch.setattr(
        torch.autograd.profiler, "record_function", lambda name: opened.append(name) or real(name)
    )
    assert torch.equal(model(x), expected)  # the hooks change nothing
    assert opened == []  # profiler off: no range at all
    with torch.profiler.profile():
        model(x)
    assert opened == [
        "dsv3::model",
        "dsv3::moe",
        "dsv3::router",
        "dsv3::experts",
        "dsv3::shared_expert",
        "dsv3::output_layer",
    ]


def _add_kernel(events, name, launch_ts, correlation):
    thread = next(e for e in events if e.get("name", "").startswith("ProfilerStep#"))
    events.append(
        {
            "ph": "X",
            "cat": "cuda_runtime",
            "name": "cudaLaunchKernel",
            "pid": thread["pid"],
            "tid": thread["tid"],
            "ts": launch_ts,
            "dur": 0.1,
            "args": {"correlation": correlation},
        }
    )
    events.append(
        {
            "ph": "X",
            "cat": "kernel",
            "name": name,
            "pid": 0,
            "tid": 7,
            "ts": launch_ts + 1,
            "dur": 1.0,
            "args": {"correlation": correlation},
        }
    )


def test_a_real_trace_names_the_gemms_forward_and_backward(tmp_path):
    """torch.profiler on the CPU records no kernels, so GEMM kernels are added at the launch times of the
    real trace's addmm ops (forward) and of its AddmmBackward0 nodes (backward): the kernels of the expert
    and of the shared expert, whose names are the same, land in different categories."""
    model = GPTModel()
    ProfileRanges.of_model([model])
    x = torch.randn(4, 8, requires_grad=True)
    schedule = torch.profiler.schedule(wait=0, warmup=0, active=1, repeat=1)
    with torch.profiler.profile(
        schedule=schedule, on_trace_ready=lambda p: p.export_chrome_trace(str(tmp_path / "cpu.json"))
    ) as prof:
        model(x).backward()
        prof.step()
    events = json.loads((tmp_path / "cpu.json").read_text())["traceEvents"]
    addmm = sorted((e for e in events if e.get("name") == "aten::addmm"), key=lambda e: e["ts"])
    backward = sorted(
        (e for e in events if e.get("name") == f"{kp.BACKWARD_RANGE}: AddmmBackward0"), key=lambda e: e["ts"]
    )
    assert len(addmm) == len(backward) == 3  # experts, shared expert, output layer
    for i, op in enumerate(addmm + backward):
        _add_kernel(events, f"sm90_xmma_gemm_bf16bf16_{i}", op["ts"] + op["dur"] / 2, 10_000 + i)
    (tmp_path / "cpu.json").write_text(json.dumps({"traceEvents": events}))
    profile = kp.profile(tmp_path / "cpu.json", top=20)
    found = {k["name"]: name for name, c in profile["steps"][0]["categories"].items() for k in c["top"]}
    # Backward runs the nodes in reverse: output layer, shared expert, experts.
    assert found == {
        "sm90_xmma_gemm_bf16bf16_0": kp.EXPERT_GEMM,
        "sm90_xmma_gemm_bf16bf16_1": kp.DENSE_GEMM,
        "sm90_xmma_gemm_bf16bf16_2": kp.OUTPUT,
        "sm90_xmma_gemm_bf16bf16_3": kp.OUTPUT,
        "sm90_xmma_gemm_bf16bf16_4": kp.DENSE_GEMM,
        "sm90_xmma_gemm_bf16bf16_5": kp.EXPERT_GEMM,
    }
