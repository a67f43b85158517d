"""The fused Adam + clip kernel against the pure-torch reference, bit for bit, under Triton's interpreter.

The interpreter runs the kernel's own code on the CPU but computes ``tl.fma`` as an fp32 multiply and an
fp32 add (two roundings: a few percent of the remainders differ). The ``fma`` fixture makes it the
reference's fma (exact fp64 product, one fp64 add, rounded to fp32), so the two must agree in every bit;
everything else (IEEE div and sqrt, the bit-level bf16 conversions and master split) is the kernel's.
"""

import importlib
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from dsv3_recipes.train.adam_reference import adamw_step, split  # noqa: E402

with pytest.MonkeyPatch.context() as env:  # read when triton.jit decorates the kernel, so at its import
    env.setenv("TRITON_INTERPRET", "1")
    sys.modules.pop("dsv3_recipes.train.fused_adam", None)
    fused_adam = importlib.import_module("dsv3_recipes.train.fused_adam")

    @triton.jit
    def fma_kernel(a_ptr, b_ptr, out_ptr):
        tl.store(out_ptr, tl.fma(tl.load(a_ptr), tl.load(b_ptr), -1.0))


# The interpreter's range() over a count the kernel loaded warns (numpy's array-to-int conversion).
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")
HYPER = {"beta1": 0.9, "beta2": 0.95, "eps": 1e-8}


@pytest.fixture(autouse=True)
def registries(monkeypatch):
    """Fresh pending coefficients and claimed grads for each test."""
    monkeypatch.setattr(fused_adam, "_PENDING", {})
    monkeypatch.setattr(fused_adam, "_CLAIMED", set())


@pytest.fixture
def fma():
    """The interpreter's tl.fma rounded once, as the reference's (see the module docstring)."""
    with fused_adam.interpreter_fma_rounded_once():
        yield


def test_the_interpreter_fma_is_rounded_once_only_inside() -> None:
    """(1 + 2^-23)(1 - 2^-23) - 1 is -2^-46, but 0 with the product rounded first (it rounds to 1)."""
    a, b, out = torch.tensor([1 + 2**-23]), torch.tensor([1 - 2**-23]), torch.empty(1)
    fma_kernel[(1,)](a, b, out)
    assert out.item() == 0.0  # the interpreter's own
    with fused_adam.interpreter_fma_rounded_once():
        fma_kernel[(1,)](a, b, out)
        assert out.item() == -(2**-46)
    fma_kernel[(1,)](a, b, out)
    assert out.item() == 0.0


def place(tensors: list[torch.Tensor], flat: bool) -> list[torch.Tensor]:
    """The tensors as they are (separate allocations), or (``flat``) copied into views of one buffer at
    odd offsets, as Megatron's param and grad buffers without padding."""
    if not flat:
        return tensors
    buf = torch.empty(sum(t.numel() + 3 for t in tensors), dtype=tensors[0].dtype)
    views, start = [], 3
    for t in tensors:
        views.append(buf[start : start + t.numel()])
        views[-1].copy_(t)
        start += t.numel() + 3
    return views


def state(sizes: list[int], flat: bool) -> list[list[torch.Tensor]]:
    """TE's lists less the grads: bf16 params, bf16 moments, int16 remainders (about half negative)."""
    params, remainders = zip(*(split(torch.randn(n) * 0.05) for n in sizes), strict=True)
    exp_avg = [(torch.randn(n) * 1e-2).to(torch.bfloat16) for n in sizes]
    exp_avg_sq = [(torch.rand(n) * 1e-4).to(torch.bfloat16) for n in sizes]
    return [place(list(ts), flat) for ts in (params, exp_avg, exp_avg_sq, remainders)]


def differing(a: list[torch.Tensor], b: list[torch.Tensor]) -> int:
    return sum(int((x.view(torch.int16) != y.view(torch.int16)).sum()) for x, y in zip(a, b, strict=True))


@pytest.mark.usefixtures("fma")
@pytest.mark.parametrize("grad_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("flat", [False, True])
def test_matches_reference_bit_for_bit(grad_dtype: torch.dtype, flat: bool) -> None:
    """Odd sizes (one over a chunk, so two programs and a tail), steps with and without a clip, two
    groups' learning rates and weight decays: params, remainders and moments equal in every bit."""
    torch.manual_seed(0)
    sizes = [1, 7, 2049, fused_adam.CHUNK + 3]
    fused = state(sizes, flat)
    ref = [[t.clone() for t in ts] for ts in fused]
    for step, coeff in enumerate([None, 0.37, 0.999, None], start=1):
        grads = place([(torch.randn(n) * 3).to(grad_dtype) for n in sizes], flat)
        for group, (lr, wd) in enumerate([(3e-4 * step, 0.1), (1e-3, 0.0)]):
            ids = range(group, len(sizes), 2)
            lists = [[ts[i] for i in ids] for ts in [grads, *fused]]
            assert fused_adam._plan(lists)[2] == (1 if flat else fused_adam.ALIGN)  # both kinds of offsets
            fused_adam.adam_step(lists, lr=lr, weight_decay=wd, step=step, clip_coeff=coeff, **HYPER)
            for i in ids:
                args = (ref[0][i], ref[3][i], grads[i], ref[1][i], ref[2][i])
                adamw_step(*args, lr=lr, weight_decay=wd, step=step, clip_coeff=coeff, **HYPER)
        assert [differing(a, b) for a, b in zip(fused, ref, strict=True)] == [0, 0, 0, 0], step


class Param:
    """What Megatron's clip and TE's step see of a precision-aware shard: the grad on ``decoupled_grad``."""

    def __init__(self, grad: torch.Tensor) -> None:
        self.decoupled_grad = grad


def te_call(op, lists: list[list[torch.Tensor]], step: int, mode: int = 1) -> None:
    """``multi_tensor_applier``'s call of TE's op: chunk size, overflow flag, lists, then TE's scalars."""
    op(2048 * 32, torch.zeros(1, dtype=torch.int), lists, 1e-3, 0.9, 0.95, 1e-8, step, mode, 1, 0.1)


def reference(lists: list[list[torch.Tensor]], step: int, coeff: float | None) -> list[list[torch.Tensor]]:
    """The reference's update of copies of TE's lists [grads, params, exp_avg, exp_avg_sq, remainders]."""
    out = [[t.clone() for t in ts] for ts in lists]
    for g, p, m, v, r in zip(*out, strict=True):
        adamw_step(p, r, g, m, v, lr=1e-3, weight_decay=0.1, step=step, clip_coeff=coeff, **HYPER)
    return out


@pytest.mark.usefixtures("fma")
def test_clip_is_deferred_to_the_kernel_for_grads_it_updated() -> None:
    """Step 1: Megatron scales every grad (none updated yet). Then the kernel's grads skip the scale pass,
    their coefficient reaches the kernel (bit-equal to scale-then-Adam), and a grad the kernel never saw
    is still Megatron's to scale; a coefficient >= 1 clears a stale one."""
    torch.manual_seed(0)
    sizes = [5, 300]
    lists = [[(torch.randn(n) * 3).to(torch.bfloat16) for n in sizes], *state(sizes, flat=False)]
    params, other = [Param(g) for g in lists[0]], Param(torch.randn(4).to(torch.bfloat16))
    scaled: list[list[Param]] = []
    clip = fused_adam.wrap_clip(lambda ps, max_norm, total_norm, decoupled: scaled.append(list(ps)))
    op = fused_adam.RemainderOp(te_op=None, scale=None)  # neither may be called
    clip([*params, other], 1.0, 0.5, use_decoupled_grad=True)
    assert scaled == [[*params, other]] and fused_adam._PENDING == {}
    te_call(op, lists, step=1)
    clip([*params, other], 1.0, 4.0, use_decoupled_grad=True)
    coeff = 1.0 / (4.0 + 1.0e-6)
    assert scaled[1] == [other] and set(fused_adam._PENDING.values()) == {coeff}
    expected = reference(lists, step=2, coeff=coeff)
    te_call(op, lists, step=2)
    assert fused_adam._PENDING == {}
    assert [differing(a, b) for a, b in zip(lists[1:], expected[1:], strict=True)] == [0, 0, 0, 0]
    assert differing(lists[0], expected[0]) == 0  # the grads are left unscaled
    clip(params, 1.0, 4.0, use_decoupled_grad=True)
    clip(params, 1.0, 0.5, use_decoupled_grad=True)  # this step's grads need no scale: none pending
    assert fused_adam._PENDING == {}


@pytest.mark.usefixtures("fma")
@pytest.mark.parametrize("norm", [4.0, 0.5])
def test_a_norm_on_the_device_reaches_the_kernel_as_a_tensor(norm: float) -> None:
    """Where TE has ``multi_tensor_scale_tensor`` Megatron's grad norm stays a device tensor and its clip
    scales by the coefficient clamped to 1 whatever its value (no host sync): the deferred coefficient is
    that clamped tensor, which the kernel reads, bit-equal to Megatron's scale by it and then Adam."""
    torch.manual_seed(0)
    sizes = [5, 300]
    lists = [[(torch.randn(n) * 3).to(torch.bfloat16) for n in sizes], *state(sizes, flat=False)]
    params = [Param(g) for g in lists[0]]
    clip = fused_adam.wrap_clip(lambda *args: pytest.fail("Megatron's scale pass ran"))
    op = fused_adam.RemainderOp(te_op=None, scale=None)
    fused_adam._CLAIMED.update(g.data_ptr() for g in lists[0])  # the kernel updated them last step
    clip(params, 1.0, torch.tensor([norm]), use_decoupled_grad=True)
    (pending,) = {id(c): c for c in fused_adam._PENDING.values()}.values()
    assert (
        isinstance(pending, torch.Tensor)
        and pending.item() == (1.0 / (torch.tensor([norm]) + 1.0e-6)).clamp(max=1.0).item()
    )
    expected = reference(lists, step=3, coeff=pending.item())
    te_call(op, lists, step=3)
    assert fused_adam._PENDING == {}
    assert [differing(a, b) for a, b in zip(lists[1:], expected[1:], strict=True)] == [0, 0, 0, 0]


@pytest.mark.usefixtures("fma")
def test_op_falls_back_where_the_kernel_does_not_apply() -> None:
    """Adam with L2 (mode 0) goes to TE's op, after Megatron's scale of a pending coefficient; grads with
    two coefficients are scaled apart, then updated with none."""
    torch.manual_seed(0)
    lists = [[(torch.randn(n) * 3).to(torch.bfloat16) for n in (3, 9)], *state([3, 9], flat=False)]
    calls: list[tuple] = []
    op = fused_adam.RemainderOp(
        te_op=lambda *args: calls.append(("te", args[2], args[8])),
        scale=lambda grads, coeff: calls.append(("scale", grads, coeff)),
    )
    fused_adam._PENDING[lists[0][0].data_ptr()] = 0.5
    te_call(op, lists, step=1, mode=0)
    assert calls == [("scale", [lists[0][0]], 0.5), ("te", lists, 0)] and not fused_adam._CLAIMED
    calls.clear()
    fused_adam._PENDING.update({lists[0][0].data_ptr(): 0.5, lists[0][1].data_ptr(): 0.25})
    expected = reference(lists, step=1, coeff=None)
    te_call(op, lists, step=1)
    assert sorted(calls, key=str) == [("scale", [lists[0][1]], 0.25), ("scale", [lists[0][0]], 0.5)]
    assert [differing(a, b) for a, b in zip(lists, expected, strict=True)] == [0] * 5


@pytest.mark.usefixtures("fma")
def test_the_kernels_verdict_is_kept_per_tensor_set_and_dtype() -> None:
    """fp16 grads go to TE's op; bf16 grads reusing the same memory get the kernel: the cached verdict is
    keyed on dtype as well as address, so a reallocation cannot inherit another tensor set's answer."""
    torch.manual_seed(0)
    sizes = (5, 11)
    params = state(list(sizes), flat=False)
    raw = [torch.randn(n).to(torch.bfloat16) for n in sizes]
    calls: list[str] = []
    op = fused_adam.RemainderOp(te_op=lambda *args: calls.append("te"), scale=None)
    fp16 = [g.view(torch.float16) for g in raw]  # the same addresses and sizes, another dtype
    assert fused_adam._plan([fp16, *params]) is None
    te_call(op, [fp16, *params], step=1)
    expected = reference([raw, *params], step=1, coeff=None)
    te_call(op, [raw, *params], step=1)
    assert calls == ["te"]
    assert [differing(a, b) for a, b in zip([raw, *params], expected, strict=True)] == [0] * 5
    with pytest.raises(ValueError, match="contiguous bf16 params"):
        fused_adam.adam_step([fp16, *params], lr=1e-3, weight_decay=0.1, step=2, **HYPER)


def test_init_swaps_te_op_only_with_param_remainders() -> None:
    """TE's FusedAdam keeps its op unless it stores param remainders (bf16 params, fp32 master)."""

    def te_init(self, remainders: bool) -> None:
        self.store_param_remainders = remainders
        self.multi_tensor_adam_param_remainder = "te"

    init = fused_adam.wrap_init(te_init)
    with_remainders, without = type("A", (), {})(), type("B", (), {})()
    init(with_remainders, True)
    init(without, False)
    assert isinstance(with_remainders.multi_tensor_adam_param_remainder, fused_adam.RemainderOp)
    assert with_remainders.multi_tensor_adam_param_remainder.te_op == "te"
    assert without.multi_tensor_adam_param_remainder == "te"
