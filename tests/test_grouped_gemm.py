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


@pytest.fixture
def te_supports(monkeypatch):
    """TE's predicate for its one-launch path, answered by the test (the real one needs a GPU and cuBLASLt
    13.4+); records what it was asked."""
    asked = []

    def supports(answer: bool):
        def predicate(recipe, dtype):
            asked.append((recipe, dtype))
            return answer

        monkeypatch.setattr(grouped_gemm, "is_module_grouped_tensor_path_supported", predicate)
        return asked

    return supports


def test_splits_reach_te_as_an_int64_tensor_on_the_inputs_device(seen, te_supports):
    asked = te_supports(True)
    assert grouped_gemm.install()
    layer = type("Layer", (), {"use_grouped_tensor": True})()
    te_ext.TEGroupedLinear.forward(layer, torch.zeros(5, 2), [2, 0, 3])
    (splits,) = seen
    assert isinstance(splits, torch.Tensor) and splits.dtype == torch.int64
    assert splits.tolist() == [2, 0, 3] and splits.device.type == "cpu"
    assert asked == [(None, torch.float32)]  # no FP8 autocast: no recipe; the input's dtype


def test_fc1_and_fc2_share_one_copy_of_the_same_list(seen, te_supports):
    """Megatron hands both GEMMs of an expert layer the same list: one host-to-device copy serves both."""
    te_supports(True)
    grouped_gemm.install()
    layer = type("Layer", (), {"use_grouped_tensor": True})()
    counts, next_counts = [2, 3], [2, 3]
    for splits in (counts, counts, next_counts):
        te_ext.TEGroupedLinear.forward(layer, torch.zeros(5, 2), splits)
    fc1, fc2, next_layer = seen
    assert fc2 is fc1
    assert next_layer is not fc1 and next_layer.tolist() == [2, 3]  # equal counts, another layer's list


def test_where_te_would_fall_back_the_list_stays_and_a_warning_says_why(seen, te_supports):
    """An older cuBLASLt (13.1 in torch 2.11's pins): a tensor would cost a copy and TE's read-back."""
    te_supports(False)
    grouped_gemm.install()
    layer = type("Layer", (), {"use_grouped_tensor": True})()
    with pytest.warns(UserWarning, match="one GEMM per expert"):
        te_ext.TEGroupedLinear.forward(layer, torch.zeros(5, 2), [2, 3])
    assert seen == [[2, 3]]


def test_layers_without_the_one_launch_path_keep_their_list(seen, te_supports):
    asked = te_supports(True)
    grouped_gemm.install()
    layer = type("Layer", (), {"use_grouped_tensor": False})()
    te_ext.TEGroupedLinear.forward(layer, torch.zeros(5, 2), [2, 3])
    assert seen == [[2, 3]] and asked == []


def test_installs_once(seen):
    assert grouped_gemm.install()
    assert not grouped_gemm.install()


@pytest.fixture
def dispatcher(monkeypatch):
    """Megatron's all-gather dispatcher class with its postprocess restored after the test, and one EP=1
    TP=1 stand-in of its state: 12 tokens routed top-3 of 5 experts, unfused permute (the CPU's)."""
    from megatron.core.transformer.moe.token_dispatcher import MoEAllGatherTokenDispatcher

    monkeypatch.setattr(
        MoEAllGatherTokenDispatcher, "dispatch_postprocess", MoEAllGatherTokenDispatcher.dispatch_postprocess
    )
    torch.manual_seed(0)
    tokens, experts, topk = 12, 5, 3
    scores = torch.rand(tokens, experts)
    chosen = scores.topk(topk, dim=1).indices
    routing_map = torch.zeros(tokens, experts, dtype=torch.bool).scatter_(1, chosen, True)

    def fresh():
        config = type("Config", (), {"moe_permute_fusion": False})()
        return type(
            "State",
            (),
            dict(
                tp_size=1,
                ep_size=1,
                router_topk=topk,
                local_expert_indices=list(range(experts)),
                routing_map=routing_map,
                config=config,
            ),
        )()

    probs = torch.where(routing_map, scores, 0.0)
    return MoEAllGatherTokenDispatcher, fresh, torch.randn(tokens, 4), probs


def test_counts_on_device_gives_megatrons_permutation_probs_and_counts_without_the_host(
    dispatcher, te_supports
):
    """The same permuted tokens, probs (masked_select's expert-major order) and counts as Megatron's own
    postprocess, and the same tokens back from the combine; the counts as a tensor where Megatron's are."""
    cls, fresh, hidden, probs = dispatcher
    te_supports(True)
    megatron_state, device_state = fresh(), fresh()
    expected = cls.dispatch_postprocess(megatron_state, hidden, probs)
    assert grouped_gemm.install_counts_on_device() and not grouped_gemm.install_counts_on_device()
    permuted, counts, permuted_probs = cls.dispatch_postprocess(device_state, hidden, probs)
    assert isinstance(counts, grouped_gemm.CountsOnDevice)
    assert torch.equal(permuted, expected[0]) and torch.equal(permuted_probs, expected[2])
    assert torch.equal(counts.tolist(), expected[1]) and isinstance(counts.tolist(), torch.Tensor)
    out = permuted * 2
    assert torch.equal(cls.combine_preprocess(device_state, out), cls.combine_preprocess(megatron_state, out))


def test_counts_stay_megatrons_where_te_would_not_take_them(dispatcher, te_supports):
    cls, fresh, hidden, probs = dispatcher
    te_supports(False)
    grouped_gemm.install_counts_on_device()
    _, counts, _ = cls.dispatch_postprocess(fresh(), hidden, probs)
    assert isinstance(counts, torch.Tensor) and counts.tolist() == probs.gt(0).sum(0).tolist()
