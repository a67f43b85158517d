"""The TE param-remainder reference: the bf16+int16 split is lossless and the update tracks fp32 AdamW."""

import torch

from dsv3_recipes.train.adam_reference import adamw_step, master_from, split


def test_split_round_trips_and_rounds_param_to_nearest() -> None:
    master = torch.randn(10007, dtype=torch.float32) * 3
    param, rem = split(master)
    assert torch.equal(master_from(param, rem).view(torch.int32), master.view(torch.int32))
    assert (param.float() - master).abs().le((master.to(torch.bfloat16).float() - master).abs()).all()


def test_update_tracks_fp32_adamw() -> None:
    torch.manual_seed(0)
    n, lr, wd = 4099, 1e-3, 0.1
    master = torch.randn(n)
    param, rem = split(master)
    m, v = torch.zeros(n, dtype=torch.bfloat16), torch.zeros(n, dtype=torch.bfloat16)
    ref = torch.nn.Parameter(master.clone())
    opt = torch.optim.AdamW([ref], lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=wd)
    for step in range(1, 4):
        grad = torch.randn(n).to(torch.bfloat16)
        adamw_step(
            param,
            rem,
            grad,
            m,
            v,
            lr=lr,
            beta1=0.9,
            beta2=0.95,
            eps=1e-8,
            weight_decay=wd,
            step=step,
            clip_coeff=0.5,
        )
        ref.grad = (grad.float() * 0.5).to(torch.bfloat16).float()
        opt.step()
    assert (master_from(param, rem) - ref.detach()).abs().max() < 1e-4


def test_sqrt_is_correctly_rounded() -> None:
    """Its fp32 root is the nearest to the exact one (torch's fp32 sqrt misses 13.945556's on AVX2)."""
    from fractions import Fraction

    from dsv3_recipes.train.adam_reference import sqrt_rn

    torch.manual_seed(0)
    x = torch.cat([torch.tensor([13.945556]), torch.rand(300) * 100, torch.rand(300) * 1e-6])
    root = sqrt_rn(x)
    for xi, ri in zip(x.tolist(), root, strict=True):
        around = [torch.nextafter(ri, ri * side).item() for side in (1, 0, 2)]  # the root and its neighbours
        errors = [abs(Fraction(r) ** 2 - Fraction(xi)) for r in around]
        assert errors[0] == min(errors), (xi, around)
