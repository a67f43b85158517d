"""Pure-torch reference of TE's ``AdamFunctorMasterParamRemainder`` (AdamW mode), bit for bit.

The fused Adam + clip kernel of issue 30 must match TE's param-remainder kernel exactly, so this is
its definition, read from TE's ``multi_tensor/adam.cu`` and checked against nvcc's PTX for sm_90:
the fp32 master is the bf16 param's bits (less one where the remainder is negative: TE rounds the
param up) over the int16 remainder; ``m = fma(1-b1, g, b1*m)``, ``v = fma(g, (1-b2)*g, b2*v)``,
IEEE divisions and sqrt, ``update = fma(p, wd, (m/bc1) / (sqrt(v/bc2) + eps))``, ``p = fma(-lr,
update, p)`` (read as contracted from the PTX; on an H100, 2026-12-07, TE's kernel differed from this
in 34 of 4,097 remainders, as if it were not: ``benchmarks/adam_forms.py`` tells on a GPU); moments
are stored as bf16 (round to nearest even).
The bias corrections are TE's host values: ``float(1 - pow(double(float(beta)), step))``. The clip
scale is Megatron's separate pass folded in: the grad is ``bf16(float(g) * coeff)``. CPU only.
"""

from __future__ import annotations

import torch


def fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """fp32 fused multiply-add: the fp32 product is exact in fp64, then one fp64 add and the cast
    (double rounding differs from a true fma only in rare ties)."""
    return (a.double() * b.double() + c.double()).float()


def sqrt_rn(x: torch.Tensor) -> torch.Tensor:
    """IEEE fp32 square root (as ``sqrt.rn.f32``): by way of fp64, whose correctly rounded root rounds to
    the correctly rounded fp32 one. torch's own fp32 sqrt on CPU is not correctly rounded (AVX2 builds
    miss one result in six)."""
    return torch.sqrt(x.double()).float()


def bias_corrections(beta1: float, beta2: float, step: int) -> tuple[float, float]:
    """TE's host-side ``1 - std::pow(beta, step)``: float beta promoted to double, result to float."""
    f32 = lambda x: torch.tensor(x, dtype=torch.float32).item()  # noqa: E731
    return f32(1.0 - f32(beta1) ** step), f32(1.0 - f32(beta2) ** step)


def master_from(param: torch.Tensor, remainder: torch.Tensor) -> torch.Tensor:
    """The fp32 master weight held as a bf16 param (rounded up where the remainder is negative)."""
    hi = param.view(torch.int16).to(torch.int32) & 0xFFFF
    lo = remainder.to(torch.int32) & 0xFFFF
    hi = torch.where(remainder < 0, (hi - 1) & 0xFFFF, hi)
    return ((hi << 16) | lo).to(torch.int32).view(torch.float32)


def split(master: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 master -> (bf16 param rounded half-up on the dropped bits, int16 remainder), as TE."""
    bits = master.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    hi, lo = bits >> 16, bits & 0xFFFF
    hi = torch.where(lo >= 0x8000, (hi + 1) & 0xFFFF, hi)
    as16 = lambda x: torch.where(x >= 0x8000, x - 0x10000, x).to(torch.int16)  # noqa: E731
    return as16(hi).view(torch.bfloat16), as16(lo)


def adamw_step(
    param: torch.Tensor,
    remainder: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: int,
    clip_coeff: float | None = None,
) -> None:
    """One TE param-remainder AdamW update in place (bf16 param, int16 remainder, bf16 moments)."""
    f32 = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    bc1, bc2 = bias_corrections(beta1, beta2, step)
    b1, b2 = f32(beta1), f32(beta2)
    g = grad.float()
    if clip_coeff is not None:
        g = (g * f32(clip_coeff)).to(grad.dtype).float()
    p = master_from(param, remainder)
    m = fma(1 - b1, g, b1 * exp_avg.float())
    v = fma(g, (1 - b2) * g, b2 * exp_avg_sq.float())
    denom = sqrt_rn(v / f32(bc2)) + f32(eps)
    update = fma(p, f32(weight_decay), (m / f32(bc1)) / denom)
    p = fma(-f32(lr), update, p)
    new_param, new_rem = split(p)
    param.copy_(new_param)
    remainder.copy_(new_rem)
    exp_avg.copy_(m.to(torch.bfloat16))
    exp_avg_sq.copy_(v.to(torch.bfloat16))
