"""TorchTitan's expert load per step (benchmarks/torchtitan/tt_expert_load.py): the same statistics as
Megatron's ExpertLoad, read from TorchTitan's counters before its own optimizer pre-hook zeroes them."""

import json
import sys
import types
from pathlib import Path

import pytest
from conftest import load_script

torch = pytest.importorskip("torch")

TT = Path(__file__).parent.parent / ".tt"


@pytest.fixture
def plugin(monkeypatch):
    """The plug-in with a stand-in for ../shared/torchtitan/tt_dsv3_proxy (TorchTitan is not installed here);
    its global optimizer hook is removed afterwards."""
    monkeypatch.setitem(sys.modules, "tt_dsv3_proxy", types.ModuleType("tt_dsv3_proxy"))
    module = load_script("benchmarks/torchtitan/tt_expert_load.py", "tt_expert_load")
    yield module
    module.HOOK.remove()


class Moe(torch.nn.Module):
    """TorchTitan's MoE buffers, and the forward that adds to its count."""

    def __init__(self, experts):
        super().__init__()
        self.register_buffer("tokens_per_expert", torch.zeros(experts))
        self.register_buffer("expert_bias", torch.zeros(experts))


class Block(torch.nn.Module):
    def __init__(self, moe):
        super().__init__()
        self.moe_enabled = moe
        self.moe = Moe(4) if moe else None


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleDict({"0": Block(False), "1": Block(True), "2": Block(True)})
        self.weight = torch.nn.Parameter(torch.zeros(1))


class Container(torch.optim.SGD):
    """Like TorchTitan's OptimizersContainer: an Optimizer with model_parts, whose own pre-hook (the
    expert-bias update) zeroes the counts, as TorchTitan's does."""

    def __init__(self, model):
        super().__init__(model.parameters(), lr=0.1)
        self.model_parts = [model]

        def update_bias(*_):
            for block in model.layers.values():
                if block.moe_enabled:
                    block.moe.expert_bias.add_(
                        1e-3 * torch.sign(block.moe.tokens_per_expert.mean() - block.moe.tokens_per_expert)
                    )
                    block.moe.tokens_per_expert.zero_()

        self.register_step_pre_hook(update_bias)


def test_each_step_is_logged_with_expert_loads_statistics(plugin, capsys):
    pytest.importorskip("megatron.bridge", reason="compares with the train side's ExpertLoad")
    from dsv3_recipes.train.callbacks import ExpertLoad

    model = Model()
    optimizer = Container(model)
    inner = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)  # no model_parts: ignored
    loads = [[[6.0, 2.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]], [[1.0, 1.0, 3.0, 3.0], [8.0, 0.0, 0.0, 0.0]]]
    for step_load in loads:
        for block, counts in zip((model.layers["1"], model.layers["2"]), step_load, strict=True):
            block.moe.tokens_per_expert.add_(torch.tensor(counts))
        optimizer.step()
        inner.step()
    plugin.LOG.flush()  # what atexit does for the last step
    lines = [json.loads(line.split(plugin.TAG, 1)[1]) for line in capsys.readouterr().out.splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    for line, step_load in zip(lines, loads, strict=True):
        reference = ExpertLoad([], experts=4, device="cpu")
        reference.counts = torch.tensor(step_load)
        expected = reference.summary()
        assert {k: line[k] for k in expected} == pytest.approx(expected)
    # The bias each step routed with: zero at step 1, after step 1's update at step 2.
    assert (lines[0]["expert_bias_min"], lines[0]["expert_bias_max"]) == (0.0, 0.0)
    assert (lines[1]["expert_bias_min"], lines[1]["expert_bias_max"]) == pytest.approx((-1e-3, 1e-3))


def test_the_command_line_replaces_the_tomls_plugin():
    """TorchTitan f1a96b34's ConfigManager: CLI over TOML, so --experimental.custom_import replaces the job
    toml's tt_dsv3_proxy (needs .tt from benchmarks/torchtitan/make_assets.sh: tyro and TorchTitan)."""
    if not (TT / "harness" / "dsv3_proxy.toml").is_file():
        pytest.skip("no .tt/ (benchmarks/torchtitan/make_assets.sh)")
    import subprocess
    import tempfile
    import zipfile

    with tempfile.TemporaryDirectory() as site:
        for wheel in (TT / "whl").glob("*.whl"):
            zipfile.ZipFile(wheel).extractall(site)
        code = (
            "from torchtitan.config.manager import ConfigManager; import sys; "
            "c = ConfigManager().parse_args(sys.argv[1:]); "
            "print(c.experimental.custom_import, c.profiling.enable_profiling, c.profiling.profile_freq)"
        )
        args = [
            "--job.config_file",
            str(TT / "harness" / "dsv3_proxy.toml"),
            "--experimental.custom_import",
            "tt_expert_load",
            "--profiling.enable_profiling",
            "--profiling.profile_freq",
            "20",
        ]
        out = subprocess.run(
            [sys.executable, "-c", code, *args],
            capture_output=True,
            text=True,
            timeout=300,
            env={"PYTHONPATH": f"{site}:{TT / 'torchtitan'}", "PATH": "/usr/bin:/bin"},
        )
    assert out.stdout.split() == ["tt_expert_load", "True", "20"], out.stderr[-2000:]
