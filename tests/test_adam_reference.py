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
