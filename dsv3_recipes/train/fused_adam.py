"""TE's param-remainder AdamW with Megatron's clip coefficient folded in, in one Triton launch.

In the profiled proxy_1gpu step the optimizer spends 5.4 ms in Megatron's clip scale pass (a read and a
write of every grad) and 36.1 ms in TE's ``AdamFunctorMasterParamRemainder`` at ~1.8 TB/s. This kernel
does both in one pass of 18 bytes per parameter (read grad, param, remainder and moments; write all but
the grad), meant to be bit for bit what TE computes after Megatron's scale (``adam_reference``'s
reading of it, matched exactly on the CPU; on an H100 TE differed in 34 of 4,097 remainders, most likely the
contraction of the last step, ``LAST_FMA``, until ``benchmarks/adam_forms.py`` says which on a GPU).

Design: the tensors stay where TE and Megatron put them (TE's state tensors are the checkpointed ones,
views of Megatron's buffers the params and grads), so nothing is copied or laid out again. A chunk table
(int64, one row per ``CHUNK`` elements of a tensor) holds each chunk's element offsets from the
lowest-addressed tensor of each of the five lists and its length; the kernel takes those five tensors as
base pointers, so one launch covers every tensor of TE's call. Offsets are stored in units of 8 elements
where every address allows it, so Triton can prove 16-byte alignment and vectorise; each chunk runs
``BLOCK``-element blocks without a mask and masks only its tail. Conversions to and from bf16 are done
on the bits (round to nearest even), so the interpreter (whose casts truncate) runs the same arithmetic.

``install`` puts it under Megatron and TE at the two narrowest points: the param-remainder op of each TE
``FusedAdam`` (the instance attribute its ``step`` calls with the lists and scalars) and Megatron's
``clip_grad_by_total_norm_fp32``, which for grads this op updated records the coefficient instead of
scaling them (the grad norm stays Megatron's). Train side: imports torch and Triton (TE and Megatron in
``install``).
"""

from __future__ import annotations

import contextlib
import functools
import struct
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import triton
import triton.language as tl

CHUNK = 1 << 16  # elements per program: 53k programs for the 3.5B proxy, a 2.5 MB table
BLOCK = 2048  # elements per unmasked step: 16 per thread of 4 warps, two 16-byte loads of bf16 each
NUM_WARPS = 4
ALIGN = 8  # elements: 16 bytes of bf16/int16, what a vectorised load needs
LAST_FMA = True  # ``p - lr * update`` as one fma (the reference's reading); False: rounded twice


@triton.jit
def _widen(x):
    """bf16 -> fp32, exact (by the bits)."""
    return (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)


@triton.jit
def _narrow(x):
    """fp32 -> bf16 rounded to nearest even, NaN to 0x7FFF as ``cvt.rn.bf16.f32`` (by the bits)."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    rounded = tl.where(x != x, 0x7FFF, rounded)
    return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _update(
    g_ptr, p_ptr, m_ptr, v_ptr, r_ptr, idx, mask,
    neg_lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, bc1, bc2, coeff,
    CLIP: tl.constexpr, COEFF_ON_DEVICE: tl.constexpr, GRAD_BF16: tl.constexpr, LAST_FMA: tl.constexpr,
):  # fmt: skip
    """One block: TE's ``AdamFunctorMasterParamRemainder`` (AdamW) after Megatron's clip scale."""
    g = tl.load(g_ptr + idx, mask=mask)
    if GRAD_BF16:
        g = _widen(g)
    if CLIP:
        g = g * (tl.load(coeff) if COEFF_ON_DEVICE else coeff)
        if GRAD_BF16:  # Megatron's scale pass writes the scaled grad back as bf16
            g = _widen(_narrow(g))
    hi = tl.load(p_ptr + idx, mask=mask).to(tl.uint16, bitcast=True).to(tl.uint32)
    lo = tl.load(r_ptr + idx, mask=mask)
    hi = tl.where(lo < 0, hi - 1, hi) & 0xFFFF  # TE rounded the param up where the remainder is negative
    p = ((hi << 16) | lo.to(tl.uint16, bitcast=True).to(tl.uint32)).to(tl.float32, bitcast=True)
    m = tl.fma(one_minus_beta1, g, beta1 * _widen(tl.load(m_ptr + idx, mask=mask)))
    v = tl.fma(g, one_minus_beta2 * g, beta2 * _widen(tl.load(v_ptr + idx, mask=mask)))
    denom = tl.sqrt_rn(tl.div_rn(v, bc2)) + eps
    update = tl.fma(p, weight_decay, tl.div_rn(tl.div_rn(m, bc1), denom))
    p = tl.fma(neg_lr, update, p) if LAST_FMA else p + neg_lr * update
    bits = p.to(tl.uint32, bitcast=True)
    lo = bits & 0xFFFF
    hi = ((bits >> 16) + (lo >= 0x8000).to(tl.uint32)) & 0xFFFF  # the param rounds half up
    tl.store(p_ptr + idx, hi.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
    tl.store(r_ptr + idx, lo.to(tl.uint16).to(tl.int16, bitcast=True), mask=mask)
    tl.store(m_ptr + idx, _narrow(m), mask=mask)
    tl.store(v_ptr + idx, _narrow(v), mask=mask)


@triton.jit
def _adam_kernel(
    table, g_ptr, p_ptr, m_ptr, v_ptr, r_ptr,
    neg_lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, bc1, bc2, coeff,
    UNIT: tl.constexpr, CLIP: tl.constexpr, COEFF_ON_DEVICE: tl.constexpr, GRAD_BF16: tl.constexpr,
    LAST_FMA: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """One chunk of the table: its full blocks unmasked (vectorised), then its masked tail. The scalars
    are fp32 values, derived ones (``1 - beta``, ``-lr``) made on the host: the interpreter would keep a
    Python float in double precision where the GPU rounds it to fp32."""
    row = table + tl.program_id(0).to(tl.int64) * 6  # grad, param, m, v, remainder offsets; length
    # Offsets times the constexpr UNIT: Triton then knows their divisibility (alignment).
    g_ptr += tl.load(row) * UNIT
    p_ptr += tl.load(row + 1) * UNIT
    m_ptr += tl.load(row + 2) * UNIT
    v_ptr += tl.load(row + 3) * UNIT
    r_ptr += tl.load(row + 4) * UNIT
    n = tl.load(row + 5)
    idx = tl.arange(0, BLOCK)
    scalars = (neg_lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, bc1, bc2, coeff)
    for i in range(n // BLOCK):
        s = i * BLOCK
        _update(
            g_ptr + s, p_ptr + s, m_ptr + s, v_ptr + s, r_ptr + s, idx, None, *scalars,
            CLIP, COEFF_ON_DEVICE, GRAD_BF16, LAST_FMA,
        )  # fmt: skip
    s = n // BLOCK * BLOCK
    if s < n:
        mask = idx < n - s
        _update(
            g_ptr + s, p_ptr + s, m_ptr + s, v_ptr + s, r_ptr + s, idx, mask, *scalars,
            CLIP, COEFF_ON_DEVICE, GRAD_BF16, LAST_FMA,
        )  # fmt: skip


def f32(x: float) -> float:
    """``x`` rounded to fp32 (to nearest, as the launcher and C++'s float conversion round)."""
    return struct.unpack("f", struct.pack("f", x))[0]


def bias_correction(beta: float, step: int) -> float:
    """TE's host-side ``1 - std::pow(beta, step)``: float beta, double pow, float result."""
    return f32(1.0 - f32(beta) ** step)


Plan = tuple[torch.Tensor, tuple[int, ...], int]
_TABLES: dict[tuple, Plan | None] = {}  # _plan's, by addresses, sizes and dtypes


def _plan(tensor_lists: Sequence[Sequence[torch.Tensor]]) -> Plan | None:
    """The chunk table for these tensors, the index of each list's base tensor, and the offset unit; None
    where the kernel does not take them (``supported``).

    Cached on the tensors' addresses, sizes and dtypes (TE hands the same tensors every step; a checkpoint
    load that replaces them makes a new key), so the step's host work is the key alone."""
    ptrs = [[t.data_ptr() for t in ts] for ts in tensor_lists]
    sizes = [t.numel() for t in tensor_lists[1]]
    key = (*map(tuple, ptrs), tuple(sizes), tuple(ts[0].dtype for ts in tensor_lists))
    if key in _TABLES:
        return _TABLES[key]
    if len(_TABLES) >= 16:  # a few calls a step (param groups, TE's splits): the rest are replaced tensors'
        _TABLES.clear()
    if not supported(tensor_lists):
        _TABLES[key] = None
        return None
    bases = tuple(min(range(len(p)), key=p.__getitem__) for p in ptrs)
    offsets = []
    for ts, p, b in zip(tensor_lists, ptrs, bases, strict=True):
        size = ts[0].element_size()
        if any((q - p[b]) % size for q in p):
            raise ValueError(f"{ts[0].dtype} tensors not aligned to their element size")
        offsets.append([(q - p[b]) // size for q in p])
    offs = torch.tensor(offsets, dtype=torch.int64).T  # (tensors, 5)
    unit = ALIGN if bool((offs % ALIGN == 0).all()) else 1
    n = torch.tensor(sizes, dtype=torch.int64)
    chunks = (n + CHUNK - 1) // CHUNK
    owner = torch.repeat_interleave(torch.arange(len(sizes)), chunks)
    start = (torch.arange(len(owner)) - (torch.cumsum(chunks, 0) - chunks)[owner]) * CHUNK
    table = torch.cat(
        [(offs[owner] + start[:, None]) // unit, (n[owner] - start).clamp(max=CHUNK)[:, None]], 1
    )
    _TABLES[key] = (table.to(tensor_lists[1][0].device), bases, unit)
    return _TABLES[key]


def supported(tensor_lists: Sequence[Sequence[torch.Tensor]]) -> bool:
    """Whether the kernel takes these lists [grads, bf16 params, bf16 exp_avg, bf16 exp_avg_sq, int16
    remainders]: contiguous tensors of matching sizes, grads bf16 or fp32."""
    dtypes = (None, torch.bfloat16, torch.bfloat16, torch.bfloat16, torch.int16)
    return tensor_lists[0][0].dtype in (torch.bfloat16, torch.float32) and all(
        (d is None or t.dtype == d) and t.is_contiguous() and t.numel() == p.numel()
        for ts, d in zip(tensor_lists, dtypes, strict=True)
        for t, p in zip(ts, tensor_lists[1], strict=True)
    )


def adam_step(
    tensor_lists: Sequence[Sequence[torch.Tensor]],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: int,
    clip_coeff: float | torch.Tensor | None = None,
    block: int = BLOCK,
    num_warps: int = NUM_WARPS,
    plan: Plan | None = None,
) -> None:
    """TE's ``multi_tensor_adam_param_remainder`` (AdamW, bias correction) on TE's lists [grads, params,
    exp_avg, exp_avg_sq, remainders], after Megatron's clip scale by ``clip_coeff`` (None: no scale; a
    one-element fp32 device tensor, as Megatron's norm is where TE's multi_tensor_scale_tensor exists, is
    read by the kernel: no host sync), in one launch. The grads are left as they are (Megatron zeroes them
    before the next backward). ``plan``: these lists' ``_plan``, where the caller made it already."""
    if plan is None:
        plan = _plan(tensor_lists)
    if plan is None:
        raise ValueError(
            "the kernel takes contiguous bf16 params and moments, int16 remainders and bf16 or "
            "fp32 grads of the params' sizes"
        )
    table, bases, unit = plan
    _adam_kernel[(table.shape[0],)](
        table,
        *(ts[b] for ts, b in zip(tensor_lists, bases, strict=True)),
        -f32(lr),
        f32(beta1),
        1.0 - f32(beta1),  # exact in double, so the fp32 value the device's subtraction gives
        f32(beta2),
        1.0 - f32(beta2),
        f32(eps),
        f32(weight_decay),
        bias_correction(beta1, step),
        bias_correction(beta2, step),
        clip_coeff
        if isinstance(clip_coeff, torch.Tensor)
        else f32(1.0 if clip_coeff is None else clip_coeff),
        UNIT=unit,
        CLIP=clip_coeff is not None,
        COEFF_ON_DEVICE=isinstance(clip_coeff, torch.Tensor),
        LAST_FMA=LAST_FMA,
        GRAD_BF16=tensor_lists[0][0].dtype == torch.bfloat16,
        BLOCK=block,
        num_warps=num_warps,
        enable_fp_fusion=False,  # every multiply-add is an explicit tl.fma, as TE's are; no others
    )


_PENDING: dict[int, float | torch.Tensor] = {}  # grad address -> the coefficient Megatron's clip scales by
_CLAIMED: set[int] = set()  # grad addresses the kernel updated: only these may skip the scale pass


class RemainderOp:
    """Stands in for ``tex.multi_tensor_adam_param_remainder`` on one TE ``FusedAdam``, with its signature
    (``multi_tensor_applier`` passes the chunk size and TE's never-set overflow flag first)."""

    def __init__(self, te_op: Callable[..., None], scale: Callable[[list[torch.Tensor], float], None]):
        self.te_op = te_op  # for what the kernel does not do (Adam with L2, no bias correction)
        self.scale = scale  # Megatron's scale pass, for a coefficient the kernel cannot take

    def __call__(
        self,
        chunk_size: int,
        noop_flag: torch.Tensor,
        tensor_lists: list[list[torch.Tensor]],
        lr: float,
        beta1: float,
        beta2: float,
        eps: float,
        step: int,
        mode: int,
        bias_correction: int,
        weight_decay: float,
    ) -> None:
        grads = tensor_lists[0]
        per_grad = [_PENDING.pop(g.data_ptr(), None) for g in grads]
        coeffs = set(per_grad)
        plan = _plan(tensor_lists) if mode == 1 and bias_correction == 1 else None
        fused = plan is not None
        if not fused or len(coeffs) > 1:  # the pass Megatron skipped, then one coefficient (or none)
            for coeff in coeffs - {None}:
                self.scale([g for g, c in zip(grads, per_grad, strict=True) if same(c, coeff)], coeff)
            coeffs = {None}
        if not fused:
            args = (lr, beta1, beta2, eps, step, mode, bias_correction, weight_decay)
            self.te_op(chunk_size, noop_flag, tensor_lists, *args)
            return
        _CLAIMED.update(g.data_ptr() for g in grads)
        (coeff,) = coeffs
        adam_step(
            tensor_lists,
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            weight_decay=weight_decay,
            step=step,
            clip_coeff=coeff,
            plan=plan,
        )


@contextlib.contextmanager
def interpreter_fma_rounded_once() -> Iterator[None]:
    """Under ``TRITON_INTERPRET=1``: ``tl.fma`` rounded once, as on the GPU, by ``adam_reference``'s
    emulation (exact fp64 product, one fp64 add, then fp32). The interpreter's own is an fp32 multiply and
    an fp32 add, which moves a few percent of the remainders by an ulp."""
    from triton.runtime import interpreter

    def fp64_fma(self, x, y, z):
        exact = x.data.astype(np.float64) * y.data.astype(np.float64) + z.data.astype(np.float64)
        return interpreter.TensorHandle(exact.astype(np.float32), z.dtype.scalar)

    own = interpreter.InterpreterBuilder.create_fma
    interpreter.InterpreterBuilder.create_fma = fp64_fma
    try:
        yield
    finally:
        interpreter.InterpreterBuilder.create_fma = own


def same(a: float | torch.Tensor | None, b: float | torch.Tensor | None) -> bool:
    """One clip's coefficient: the same device tensor, or equal floats."""
    return a is b or not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor) and a == b


def megatron_scale(grads: list[torch.Tensor], coeff: float | torch.Tensor) -> None:
    """Megatron's clip scale pass (``clip_grad_by_total_norm_fp32``'s: a float < 1, or its clamped device
    tensor through TE's ``multi_tensor_scale_tensor``)."""
    from megatron.core.optimizer import clip_grads

    overflow = torch.zeros(1, dtype=torch.int, device=grads[0].device)
    on_device = isinstance(coeff, torch.Tensor)
    impl = clip_grads.multi_tensor_scale_tensor_impl if on_device else clip_grads.multi_tensor_scale_impl
    clip_grads.multi_tensor_applier(impl, overflow, [grads, grads], coeff)


def wrap_init(init: Callable[..., None]) -> Callable[..., None]:
    """TE ``FusedAdam.__init__``, then this module's op for the param-remainder case."""

    @functools.wraps(init)
    def init_with_fused_op(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        if self.store_param_remainders:
            self.multi_tensor_adam_param_remainder = RemainderOp(
                self.multi_tensor_adam_param_remainder, megatron_scale
            )

    init_with_fused_op.fused_clip = True
    return init_with_fused_op


def wrap_clip(clip: Callable[..., None]) -> Callable[..., None]:
    """Megatron's ``clip_grad_by_total_norm_fp32``, recording the coefficient for grads the kernel updated
    (the ones it saw last step) instead of scaling them; the other grads go to Megatron's."""

    @functools.wraps(clip)
    def clip_or_defer(parameters, max_norm, total_norm, use_decoupled_grad: bool = False) -> None:
        coeff = max_norm / (total_norm + 1.0e-6)  # Megatron's expression
        if not use_decoupled_grad:
            return clip(parameters, max_norm, total_norm, use_decoupled_grad)
        on_device = isinstance(coeff, torch.Tensor)  # Megatron's norm where TE's scale_tensor exists
        if on_device:
            coeff.clamp_max_(1.0)  # as Megatron, which then scales by it whatever its value
        rest = []
        for param in [parameters] if isinstance(parameters, torch.Tensor) else parameters:
            grad = getattr(param, "decoupled_grad", None)
            if grad is None or grad.data_ptr() not in _CLAIMED:
                rest.append(param)
            elif on_device or coeff < 1.0:  # Megatron's test: NaN or >= 1 leaves the grads as they are
                _PENDING[grad.data_ptr()] = coeff
            else:
                _PENDING.pop(grad.data_ptr(), None)
        if rest:
            clip(rest, max_norm, total_norm, use_decoupled_grad)

    clip_or_defer.fused_clip = True
    return clip_or_defer


def install() -> bool:
    """Patch TE's ``FusedAdam.__init__`` and Megatron's clip (as ``megatron.core.optimizer.optimizer``
    calls it) once; True when this call patched them. Before Megatron builds its optimizer."""
    from megatron.core.optimizer import optimizer
    from transformer_engine.pytorch.optimizers.fused_adam import FusedAdam

    if getattr(FusedAdam.__init__, "fused_clip", False):
        return False
    FusedAdam.__init__ = wrap_init(FusedAdam.__init__)
    optimizer.clip_grad_by_total_norm_fp32 = wrap_clip(optimizer.clip_grad_by_total_norm_fp32)
    return True
