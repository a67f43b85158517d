"""Gradient-accumulation fusion without apex (train.wgrad_fusion): Megatron-Core sees apex's module and
builds its linear layers with the fusion, and the module adds ``dy^T x`` into ``main_grad`` through TE's
GEMM. The GEMM itself needs a GPU (marked); its side-by-side cost is benchmarks/side_by_side.sh's."""

import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.core", reason="needs the train extra (uv sync --extra train)")

from dsv3_recipes.recipe.rules import APEX_WGRAD  # noqa: E402
from dsv3_recipes.train import wgrad_fusion  # noqa: E402

MEGATRON_SEES = textwrap.dedent(
    """
    import sys
    from dsv3_recipes.train import wgrad_fusion
    installed = wgrad_fusion.install() if sys.argv[1] == "install" else False
    import megatron.core.tensor_parallel.layers as layers
    from dsv3_recipes.recipe.rules import Capabilities
    print(installed, layers._grad_accum_fusion_available, Capabilities.here().wgrad_fusion)
    try:
        wgrad_fusion.install()
    except RuntimeError as late:
        print(late)
    """
)


def _megatron_sees(mode: str) -> list[str]:
    run = subprocess.run(
        [sys.executable, "-c", MEGATRON_SEES, mode], capture_output=True, text=True, check=True, timeout=300
    )
    return run.stdout.splitlines()


def test_megatron_builds_the_fusion_only_once_installed_and_only_before_its_import():
    installed, *_ = _megatron_sees("install")
    assert installed == "True True True"
    without, late = _megatron_sees("none")
    assert without == "False False True"  # TE is here: the rule lets the recipe ask, the entry installs
    assert late.endswith("must run before megatron.core.tensor_parallel.layers is imported")


@pytest.fixture
def before_megatron(monkeypatch):
    """This process as if neither apex's module nor Megatron's linear layers were imported yet; both are
    put back afterwards."""
    for name in (APEX_WGRAD, wgrad_fusion.MEGATRON_LINEAR):
        monkeypatch.setitem(sys.modules, name, None)  # remembers what was there
        del sys.modules[name]


def test_both_kernels_accumulate_dy_transposed_times_x_in_the_grads_dtype(before_megatron, monkeypatch):
    """The GEMM's arguments as TE's Linear passes them for its fused wgrad (layout NT: ``out += B^T A``),
    checked against a CPU stand-in of that contract; the GPU test runs TE's own."""
    calls = []

    def gemm(a, b, *, out_dtype, accumulate, layout, out, grad):
        calls.append((out_dtype, accumulate, layout, grad))
        out += (b.t().to(out_dtype) @ a.to(out_dtype)) if accumulate else 0

    monkeypatch.setattr(wgrad_fusion, "general_gemm", gemm)
    assert wgrad_fusion.install()
    module = sys.modules[APEX_WGRAD]
    x, dy = torch.randn(16, 3, dtype=torch.bfloat16), torch.randn(16, 5, dtype=torch.bfloat16)
    for kernel, dtype in (
        (module.wgrad_gemm_accum_fp32, torch.float32),
        (module.wgrad_gemm_accum_fp16, torch.bfloat16),
    ):
        main_grad = torch.ones(5, 3, dtype=dtype)
        kernel(x, dy, main_grad)
        expected = 1 + dy.float().t() @ x.float()
        torch.testing.assert_close(main_grad.float(), expected, rtol=2e-2, atol=2e-2)
    assert calls == [(torch.float32, True, "NT", True), (torch.bfloat16, True, "NT", True)]


@pytest.mark.gpu
def test_te_gemm_accumulates_into_fp32_main_grad_on_the_gpu(before_megatron):
    wgrad_fusion.install()
    x = torch.randn(4096, 1024, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn(4096, 2048, device="cuda", dtype=torch.bfloat16)
    main_grad = torch.randn(2048, 1024, device="cuda", dtype=torch.float32)
    expected = main_grad + dy.float().t() @ x.float()
    sys.modules[APEX_WGRAD].wgrad_gemm_accum_fp32(x, dy, main_grad)
    torch.testing.assert_close(main_grad, expected, rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("fusion", [True, False])
def test_the_train_entry_installs_it_only_when_the_recipe_asks(fusion, monkeypatch, capsys):
    """Before the container check and so before any model: the check stops this run with the flag on
    (nothing is importable), the rank's GPU count with it off (this machine has none)."""
    from dsv3_recipes import recipes
    from dsv3_recipes.launch.submit import recipe_of
    from dsv3_recipes.recipe import rules
    from dsv3_recipes.train.entry import pretrain

    installs = []
    monkeypatch.setattr(wgrad_fusion, "install", lambda: installs.append(True))
    monkeypatch.setattr(rules, "importable", lambda module: False)
    task = recipes.get("proxy_1gpu")
    task.recipe.model.gradient_accumulation_fusion = fusion
    with pytest.raises(SystemExit):
        pretrain(recipe_of(task))
    assert installs == ([True] if fusion else [])
    assert capsys.readouterr().err.startswith("dsv3: error:")
