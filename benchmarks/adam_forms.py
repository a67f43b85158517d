"""Which rounding of AdamW's arithmetic TE's param-remainder kernel runs: TE's compiled kernel against every
way nvcc/ptxas may contract its multiply-adds, bit for bit, on one GPU.

    python benchmarks/adam_forms.py --out benchmarks/results/fused_adam/DATE-GPU-forms.json

``adam_reference`` (and the Triton kernel after it) takes one form, read from TE's source and PTX; ptxas may
still contract a PTX ``mul`` + ``add`` into an fma, so the SASS can differ. This steps TE's
``multi_tensor_adam_param_remainder`` once on random state (negative remainders, non-zero moments, two
weight decays) and counts, for each form, the elements whose param, remainder or moments differ from TE's.
A form with no differing element is TE's. GPU only (TE's kernel needs one): without one it exits 2.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import shlex
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dsv3_recipes.train.adam_reference import bias_corrections, fma, master_from, split, sqrt_rn  # noqa: E402

HYPER = {"lr": 3e-4, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "step": 3}


def candidate(forms: dict[str, str], g, p_bf16, rem, m_in, v_in, wd: float) -> list[torch.Tensor]:
    """The update in one form: each ``fma`` contracted or not, its operands in either order."""
    f = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    b1, b2, lr, eps = f(HYPER["beta1"]), f(HYPER["beta2"]), f(HYPER["lr"]), f(HYPER["eps"])
    bc1, bc2 = (f(x) for x in bias_corrections(HYPER["beta1"], HYPER["beta2"], HYPER["step"]))
    p, m0, v0 = master_from(p_bf16, rem), m_in.float(), v_in.float()
    m = {  # each fp32 torch operation rounds once, as an uncontracted mul or add does on the GPU
        "fma(1-b1,g,b1*m)": fma(1 - b1, g, b1 * m0),
        "fma(b1,m,(1-b1)*g)": fma(b1, m0, (1 - b1) * g),
        "separate": b1 * m0 + (1 - b1) * g,
    }[forms["m"]]
    gg = (1 - b2) * g
    v = {
        "fma(g,(1-b2)*g,b2*v)": fma(g, gg, b2 * v0),
        "fma(b2,v,(1-b2)*g*g)": fma(b2, v0, gg * g),
        "separate": b2 * v0 + gg * g,
    }[forms["v"]]
    ratio = m / bc1 / (sqrt_rn(v / bc2) + eps)
    update = {"fma": fma(p, f(wd), ratio), "separate": p * f(wd) + ratio}[forms["update"]]
    new_p = {"fma": fma(-lr, update, p), "separate": p - lr * update}[forms["param"]]
    param, remainder = split(new_p)
    return [param, remainder, m.to(torch.bfloat16), v.to(torch.bfloat16)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--elements", type=int, default=1 << 20)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("adam_forms: needs a GPU (TE's kernel runs only there)", file=sys.stderr)
        return 2
    import transformer_engine_torch as tex
    from transformer_engine.pytorch.optimizers import multi_tensor_applier

    torch.manual_seed(0)
    n = args.elements
    params, rems = split(torch.randn(n) * 0.05)
    m = (torch.randn(n) * 1e-2).to(torch.bfloat16)
    v = (torch.rand(n) * 1e-4).to(torch.bfloat16)
    g = (torch.randn(n) * 3).to(torch.bfloat16)
    rows = []
    for wd in (0.0, 0.1):
        on_gpu = [t.clone().cuda() for t in (g, params, m, v, rems)]
        te_args = (HYPER["lr"], HYPER["beta1"], HYPER["beta2"], HYPER["eps"], HYPER["step"], 1, 1, wd)
        flag = torch.zeros(1, dtype=torch.int, device="cuda")
        multi_tensor_applier(tex.multi_tensor_adam_param_remainder, flag, [[t] for t in on_gpu], *te_args)
        te = [on_gpu[1].cpu(), on_gpu[4].cpu(), on_gpu[2].cpu(), on_gpu[3].cpu()]
        choices = {
            "m": ["fma(1-b1,g,b1*m)", "fma(b1,m,(1-b1)*g)", "separate"],
            "v": ["fma(g,(1-b2)*g,b2*v)", "fma(b2,v,(1-b2)*g*g)", "separate"],
            "update": ["fma", "separate"],
            "param": ["fma", "separate"],
        }
        for combo in itertools.product(*choices.values()):
            forms = dict(zip(choices, combo, strict=True))
            ours = candidate(forms, g.float(), params, rems, m, v, wd)
            differ = {
                name: int((a.view(torch.int16) != b.view(torch.int16)).sum())
                for name, a, b in zip(("param", "remainder", "exp_avg", "exp_avg_sq"), ours, te, strict=True)
            }
            rows.append({"weight_decay": wd, "forms": forms, "differing": differ})
    exact = [r for r in rows if not any(r["differing"].values())]
    result = {
        "command": shlex.join(["python", "benchmarks/adam_forms.py", *sys.argv[1:]]),
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name(),
        "elements": n,
        "hyper": HYPER,
        "data": "random tensors (torch.manual_seed(0)), no text",
        "routing": "none (optimizer only)",
        "expert_load": None,
        "exact_forms": exact,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    best = sorted(rows, key=lambda r: sum(r["differing"].values()))[:4]
    print(json.dumps({"exact_forms": exact, "closest": best}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
