"""The fused Adam + clip kernel (``train.fused_adam``) against TE's FusedAdam after Megatron's clip: bit for
bit, then timed.

    python benchmarks/fused_adam_check.py --out benchmarks/results/fused_adam/DATE-h100.json

On a GPU: two TE ``FusedAdam``s as Megatron builds them for the precision-aware optimizer (bf16 params,
int16 param remainders, bf16 moments, grads on ``decoupled_grad``) over the same random bf16 params, one
stock and one built after ``fused_adam.install()``; each step scales the grads with Megatron's
``clip_grad_by_total_norm_fp32`` (stock, or patched: the coefficient handed to the kernel) and steps both.
Params, remainders and moments must agree in every bit after each step. Then it times, with CUDA events
after a warm-up, the two optimizer steps (clip included) and the bare kernels (TE's
``multi_tensor_adam_param_remainder``; the Triton kernel at a few block sizes), with GB/s at 18 bytes a
parameter. Without a GPU (TE's kernels need one) it runs the kernel under ``TRITON_INTERPRET=1`` at tiny
sizes against ``adam_reference`` instead, and says so in the JSON ("reference"). Exit 1 with one line on
a mismatch.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # read when triton.jit decorates the kernel: before its import

from dsv3_recipes.train import adam_reference, fused_adam  # noqa: E402

HYPER = {"beta1": 0.9, "beta2": 0.95, "eps": 1e-8}
MAX_NORM = 1.0
NORMS = [2.5, 0.5, 3.7, 1.7]  # a step's total grad norm: clip coefficients < 1, >= 1, < 1, < 1
# What the numbers were measured on: the optimizer alone, on random state, with no model, text or router.
CONDITION = {"data": "random tensors (torch.manual_seed(0)), no text", "routing": "none (optimizer only)",
             "expert_load": None}  # fmt: skip
BYTES_PER_PARAM = 18  # read grad, param, remainder, both moments (2 B each); write all but the grad
CONFIGS = [(1024, 4), (fused_adam.BLOCK, fused_adam.NUM_WARPS), (4096, 8)]  # (BLOCK, num_warps) timed
STATE = ("exp_avg", "exp_avg_sq", "master_param")  # TE's names; master_param holds the int16 remainders


class Mismatch(Exception):
    """The first state that differs (or the clip that never reached the kernel), in words."""


def compare(step: int, names: list[str], ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> None:
    for name, a, b in zip(names, ours, theirs, strict=True):
        bits = int((a.view(torch.int16) != b.view(torch.int16)).sum())
        if bits:
            raise Mismatch(f"step {step}: {name} ({a.numel()} elements) differs in {bits} elements")


def lr_at(step: int) -> float:
    return 3e-4 * step  # changes every step, as in warm-up


def on_gpu(sizes: list[int], iters: int) -> dict:
    """TE + Megatron against the installed kernel, bit for bit, then timed."""
    from megatron.core.optimizer import clip_grads
    from megatron.core.optimizer import optimizer as megatron_optimizer
    from transformer_engine.pytorch.optimizers import FusedAdam, multi_tensor_applier

    torch.manual_seed(0)
    start = [torch.randn(n, device="cuda").mul_(0.05).to(torch.bfloat16) for n in sizes]

    def build() -> tuple[FusedAdam, list[torch.nn.Parameter]]:
        params = [torch.nn.Parameter(p.clone()) for p in start]
        for p in params:  # one allocation for the run, as Megatron's grad buffer
            p.decoupled_grad = torch.empty_like(p)
        groups = [
            {"params": params[0::2], "weight_decay": 0.1},
            {"params": params[1::2], "weight_decay": 0.0},
        ]
        opt = FusedAdam(  # what megatron.core.optimizer builds with use_precision_aware_optimizer
            groups,
            lr=lr_at(1),
            betas=(HYPER["beta1"], HYPER["beta2"]),
            eps=HYPER["eps"],
            adam_w_mode=True,
            master_weights=True,
            use_decoupled_grad=True,
            master_weight_dtype=torch.float32,
            exp_avg_dtype=torch.bfloat16,
            exp_avg_sq_dtype=torch.bfloat16,
            store_param_remainders=True,
        )
        return opt, params

    stock, stock_params = build()
    megatron_clip = clip_grads.clip_grad_by_total_norm_fp32
    fused_adam.install()
    fused, fused_params = build()
    fused_clip = megatron_optimizer.clip_grad_by_total_norm_fp32
    assert isinstance(fused.multi_tensor_adam_param_remainder, fused_adam.RemainderOp)

    def step(opt, params, clip, grads, norm: float, lr: float) -> None:
        for p, g in zip(params, grads, strict=True):
            p.decoupled_grad.copy_(g)
        clip(params, MAX_NORM, norm, use_decoupled_grad=True)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()

    def states(opt, params) -> list[torch.Tensor]:
        return [t for p in params for t in (p.data, *(opt.state[p][k] for k in STATE))]

    names = [f"tensor {i} {k}" for i in range(len(sizes)) for k in ("param", *STATE)]
    deferred = []
    for n, norm in enumerate(NORMS, start=1):
        grads = [torch.randn(s, device="cuda").mul_(3).to(torch.bfloat16) for s in sizes]
        claimed = all(p.decoupled_grad.data_ptr() in fused_adam._CLAIMED for p in fused_params)
        deferred.append(claimed and MAX_NORM / (norm + 1.0e-6) < 1.0)
        step(stock, stock_params, megatron_clip, grads, norm, lr_at(n))
        step(fused, fused_params, fused_clip, grads, norm, lr_at(n))
        compare(n, names, states(fused, fused_params), states(stock, stock_params))
    if not any(deferred):  # equal, but through Megatron's scale pass: the install missed its grads
        raise Mismatch("no step handed its clip coefficient to the kernel")
    if fused_adam._PENDING:
        raise Mismatch(f"{len(fused_adam._PENDING)} clip coefficients were never handed to the kernel")

    def timed(fn) -> float:
        """ms per call, after warm-up."""
        for _ in range(3):
            fn()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        return begin.elapsed_time(end) / iters

    state = [stock.state[p] for p in stock_params]
    lists = [[p.decoupled_grad for p in stock_params], [p.data for p in stock_params]]
    lists += [[s[k] for s in state] for k in STATE]  # TE's order: grads, params, exp_avg, exp_avg_sq, rem.
    args = (1e-4, HYPER["beta1"], HYPER["beta2"], HYPER["eps"], 10, 1, 1, 0.1)  # lr ... step, AdamW, bc, wd
    numel = sum(sizes)
    te_op = stock.multi_tensor_adam_param_remainder

    def gbps(ms: float) -> float:
        return round(BYTES_PER_PARAM * numel / ms / 1e6, 1)

    te_ms = timed(lambda: multi_tensor_applier(te_op, stock._dummy_overflow_buf, lists, *args))
    kernels = {"te_param_remainder": {"ms": round(te_ms, 3), "GB/s": gbps(te_ms)}}
    for block, warps in CONFIGS:
        hyper = {"lr": 1e-4, "weight_decay": 0.1, "step": 10, "clip_coeff": 0.5, **HYPER}
        ms = timed(lambda: fused_adam.adam_step(lists, block=block, num_warps=warps, **hyper))  # noqa: B023
        kernels[f"fused_block{block}_warps{warps}"] = {"ms": round(ms, 3), "GB/s": gbps(ms)}
    grads = [torch.randn(s, device="cuda").to(torch.bfloat16) for s in sizes]
    steps = {
        "te_clip_then_step": timed(lambda: step(stock, stock_params, megatron_clip, grads, 2.5, 1e-4)),
        "fused_step": timed(lambda: step(fused, fused_params, fused_clip, grads, 2.5, 1e-4)),
    }
    return {
        "reference": "TE FusedAdam after Megatron's clip_grad_by_total_norm_fp32, on the GPU",
        "device": torch.cuda.get_device_name(),
        "deferred_clip_steps": deferred,  # steps whose coefficient the kernel took (no scale pass)
        "offset_unit": fused_adam._plan(lists)[2],  # 8: 16-byte-aligned (vectorised) loads
        "kernels": kernels,
        "optimizer_step_ms": {k: round(v, 3) for k, v in steps.items()},
    }


def on_cpu(sizes: list[int]) -> dict:
    """No GPU, so no TE kernels: the interpreted kernel against adam_reference (fma rounded once)."""
    torch.manual_seed(0)
    params, rems = (
        list(t) for t in zip(*(adam_reference.split(torch.randn(n) * 0.05) for n in sizes), strict=True)
    )
    moments = [[torch.zeros(n, dtype=torch.bfloat16) for n in sizes] for _ in range(2)]
    ref = [[t.clone() for t in ts] for ts in (params, *moments, rems)]
    names = [f"tensor {i} {k}" for k in ("param", *STATE) for i in range(len(sizes))]
    with fused_adam.interpreter_fma_rounded_once():
        for n, norm in enumerate(NORMS, start=1):
            grads = [(torch.randn(s) * 3).to(torch.bfloat16) for s in sizes]
            coeff = MAX_NORM / (norm + 1.0e-6)
            coeff = coeff if coeff < 1.0 else None
            hyper = {"lr": lr_at(n), "weight_decay": 0.1, "step": n, "clip_coeff": coeff, **HYPER}
            fused_adam.adam_step([grads, params, *moments, rems], **hyper)
            for g, p, m, v, r in zip(grads, *ref, strict=True):
                adam_reference.adamw_step(p, r, g, m, v, **hyper)
            compare(
                n, names, [t for ts in (params, *moments, rems) for t in ts], [t for ts in ref for t in ts]
            )
    return {"reference": "adam_reference under TRITON_INTERPRET=1 (no GPU: TE's kernels need one)"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument(
        "--sizes",
        default="1,4097,1048579,54687500",
        help="elements per tensor on a GPU (3.5e9/64 last; the CPU check: 1,7,2049,CHUNK+3)",
    )
    p.add_argument("--iters", type=int, default=20, help="timed calls after the warm-up")
    p.add_argument("--last", choices=["fma", "separate"], default="fma", help="the kernel's p - lr * update")
    args = p.parse_args()
    fused_adam.LAST_FMA = args.last == "fma"
    gpu = torch.cuda.is_available()
    sizes = [int(s) for s in args.sizes.split(",")] if gpu else [1, 7, 2049, fused_adam.CHUNK + 3]
    result = {
        "command": shlex.join(["python", "benchmarks/fused_adam_check.py", *sys.argv[1:]]),
        "date": datetime.date.today().isoformat(),
        "sizes": sizes,
        "clip_norms": NORMS,
        "last": args.last,
        **CONDITION,
    }
    try:
        result |= on_gpu(sizes, args.iters) if gpu else on_cpu(sizes)
        result["equal"] = True
    except Mismatch as err:
        result |= {"equal": False, "mismatch": str(err)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if not result["equal"]:
        print(f"fused_adam_check: mismatch: {result['mismatch']}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in result.items() if k not in ("command", "date")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
