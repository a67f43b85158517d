"""The routing balance every result reports: tokens per expert of the last step, from router hooks."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.bridge", reason="needs the train extra")

from dsv3_recipes.train.callbacks import ExpertLoad  # noqa: E402


class Router(torch.nn.Module):
    """Returns (probs, routing_map) like Megatron's TopKRouter: token i goes to expert ``route[i]``."""

    def forward(self, route):
        routing_map = torch.nn.functional.one_hot(route, num_classes=4).bool()
        return routing_map.float(), routing_map


def test_counts_tokens_per_expert_and_the_worst_routers_skew():
    routers = [Router(), Router()]
    load = ExpertLoad(routers, experts=4, device="cpu")
    routers[0](torch.tensor([0, 1, 2, 3]))  # balanced: 1 each
    routers[1](torch.tensor([0, 0, 0, 1]))  # skewed: 3, 1, 0, 0
    summary = load.summary()
    assert summary == {
        "routers": 2,
        "tokens_per_expert_min": 0.0,
        "tokens_per_expert_mean": 1.0,
        "tokens_per_expert_max": 3.0,
        "worst_router_max_over_mean": 3.0,
    }


def test_the_summary_is_one_read_from_the_device_with_the_bias_range(monkeypatch):
    """Every figure comes back in one tolist(), no item(): at each step's end a host read per figure was
    a sync each with the GPU idle. A router that routed nothing is left out."""
    routers = [Router(), Router(), Router()]
    routers[0].expert_bias = torch.tensor([-0.5, 0.0, 0.25, 0.0])
    load = ExpertLoad(routers, experts=4, device="cpu")
    routers[0](torch.tensor([0, 1, 1, 1]))  # 1, 3, 0, 0: max/mean 3
    routers[1](torch.tensor([2, 3]))  # 0, 0, 1, 1: max/mean 2; routers[2] routes nothing
    reads = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: reads.append(t.shape) or tolist(t))
    monkeypatch.setattr(torch.Tensor, "item", lambda t: pytest.fail("a read per figure"))
    assert load.summary() == {
        "routers": 2,
        "tokens_per_expert_min": 0.0,
        "tokens_per_expert_mean": 0.75,
        "tokens_per_expert_max": 3.0,
        "worst_router_max_over_mean": 3.0,
        "expert_bias_min": -0.5,
        "expert_bias_max": 0.25,
    }
    assert len(reads) == 1


def test_recomputed_forwards_and_earlier_steps_are_not_counted():
    router = Router()
    load = ExpertLoad([router], experts=4, device="cpu")
    router(torch.tensor([3, 3]))
    load.reset()  # a new step
    router(torch.tensor([0, 1]))
    with torch.no_grad():  # Megatron's checkpointed first forward (full recompute) and evaluation
        router(torch.tensor([0, 0]))
    assert load.counts.tolist() == [[1.0, 1.0, 0.0, 0.0]]


def test_no_counts_no_summary():
    assert ExpertLoad([Router()], experts=4, device="cpu").summary() is None


def test_a_step_is_timed_from_the_end_of_the_one_before(monkeypatch, capsys):
    """What Bridge does between two steps (its manual GC) counts in the next step's time, as in
    Megatron's own iteration time: steps of 1 s with a 2 s pause after the second read 1, 1, 3."""
    import types

    from dsv3_recipes.launch.submit import build_task, recipe_of
    from dsv3_recipes.train import callbacks

    clock = iter([0.0, 1.0, 2.0, 5.0])  # step 1 starts at 0; the steps end at 1, 2 and (after the GC) 5
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: next(clock))
    for name, value in {
        "synchronize": lambda: None,
        "memory_allocated": lambda: 0,
        "max_memory_allocated": lambda: 0,
        "max_memory_reserved": lambda: 0,
        "get_device_name": lambda: "NVIDIA H200",
    }.items():
        monkeypatch.setattr(torch.cuda, name, value)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 1)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 0)
    callback = callbacks.ThroughputCallback(recipe_of(build_task("proxy_1gpu")))
    for step in range(3):
        context = types.SimpleNamespace(
            state=types.SimpleNamespace(train_state=types.SimpleNamespace(step=step)),
            optimizer=None,
            loss_dict={"lm loss": 1.0},
        )
        callback.on_train_step_start(context)
        callback.on_train_step_end(context)
    assert [m.step_time_s for m in callback.history] == [1.0, 1.0, 3.0]
    assert "DSV3_METRICS" in capsys.readouterr().out
