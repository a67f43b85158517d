"""Gradient-accumulation fusion without apex: TE's cuBLAS GEMM in place of apex's two wgrad kernels.

With ``model.gradient_accumulation_fusion`` each weight-gradient GEMM adds into the parameter's fp32
``main_grad`` itself, so Megatron's DDP hooks add no gradient (one ``add_`` launch per parameter and
micro-batch without it). TE's layers do it natively (``fuse_wgrad_accumulation``); Megatron-Core's own
linear layers (the output layer) call apex's ``fused_weight_gradient_mlp_cuda``, and refuse the flag
when it cannot be imported. The GPU images here have no apex, so ``install`` registers a module of that
name whose two functions run the GEMM the way TE's Linear runs its fused wgrad: ``general_gemm(x, dy,
layout="NT", accumulate=True, out=main_grad)``, that is ``main_grad += dy^T x`` with the output in
``main_grad``'s dtype. Train side: imports torch and TE.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types

import torch
from transformer_engine.pytorch.cpp_extensions import general_gemm

from dsv3_recipes.recipe.rules import APEX_WGRAD, importable

MEGATRON_LINEAR = "megatron.core.tensor_parallel.layers"  # reads the module once, at its import


def _accumulate(total_input: torch.Tensor, grad_output: torch.Tensor, main_grad: torch.Tensor) -> None:
    """``main_grad += grad_output^T @ total_input`` (2-D, [tokens, in] and [tokens, out]), accumulated by
    cuBLAS in ``main_grad``'s dtype, as apex's kernels do."""
    general_gemm(
        total_input,
        grad_output,
        out_dtype=main_grad.dtype,
        accumulate=True,
        layout="NT",
        out=main_grad,
        grad=True,
    )


def install() -> bool:
    """Make ``fused_weight_gradient_mlp_cuda`` importable (apex's if present, else the TE stand-in);
    True when the stand-in was installed. Must run before Megatron-Core's linear layers are imported:
    they decide at import whether the fusion is available."""
    if importable(APEX_WGRAD):
        return False
    if MEGATRON_LINEAR in sys.modules:
        raise RuntimeError(f"{__name__}.install() must run before {MEGATRON_LINEAR} is imported")
    module = types.ModuleType(APEX_WGRAD, __doc__)
    module.__spec__ = importlib.machinery.ModuleSpec(APEX_WGRAD, loader=None)
    module.wgrad_gemm_accum_fp32 = _accumulate  # main_grad in fp32
    module.wgrad_gemm_accum_fp16 = _accumulate  # main_grad in bf16 or fp16
    sys.modules[APEX_WGRAD] = module
    return True
