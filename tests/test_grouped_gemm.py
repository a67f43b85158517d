"""The shim that hands TE's one-launch grouped GEMM the experts' token counts as a tensor (train side)."""

import pytest

torch = pytest.importorskip("torch")
te_ext = pytest.importorskip("megatron.core.extensions.transformer_engine")

from dsv3_recipes.train import grouped_gemm  # noqa: E402


@pytest.fixture
def seen(monkeypatch):
    """Megatron's TEGroupedLinear.forward replaced by one that records the splits it is given."""
    calls = []

    def recording_forward(self, x, m_splits):
        calls.append(m_splits)
        return x, None

    monkeypatch.setattr(te_ext.TEGroupedLinear, "forward", recording_forward)
    return calls


def test_splits_reach_te_as_an_int64_tensor_on_the_inputs_device(seen):
    assert grouped_gemm.install()
    layer = type("Layer", (), {"use_grouped_tensor": True})()
    te_ext.TEGroupedLinear.forward(layer, torch.zeros(5, 2), [2, 0, 3])
    (splits,) = seen
    assert isinstance(splits, torch.Tensor) and splits.dtype == torch.int64
    assert splits.tolist() == [2, 0, 3] and splits.device.type == "cpu"


def test_layers_without_the_one_launch_path_keep_their_list(seen):
    grouped_gemm.install()
    layer = type("Layer", (), {"use_grouped_tensor": False})()
    te_ext.TEGroupedLinear.forward(layer, torch.zeros(5, 2), [2, 3])
    assert seen == [[2, 3]]


def test_installs_once(seen):
    assert grouped_gemm.install()
    assert not grouped_gemm.install()
