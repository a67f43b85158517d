"""Time the parts of one-GPU stand-ins (``plan.calibration.stand_in``) with Megatron-Core and TE.

Each stand-in is built the way the train entry builds a model (the recipe's ConfigContainer, Bridge's
mixed-precision setup, Bridge's provider), on one rank with every parallel size 1. Its parts run the
real modules: the dense and the MoE decoder layer, the MoE layer's MLP alone, the embedding, the head
(final norm, output layer, cross-entropy) and the whole model, whose excess over the parts is the MTP
depth. Each part is timed forward+backward (and forward alone without autograd, for full recompute)
over several passes after warm-up, and profiled once to split its GPU time into tensor-core kernels
(GEMMs, attention) and the memory-bound rest, and its wall time into kernel time and the GPU waiting
for the host. The optimizer is timed per parameter with TE's FusedAdam, as Megatron's precision-aware
optimizer runs it. GPU only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import re
import socket
import time
from collections.abc import Callable

import torch
from megatron.core import parallel_state
from megatron.core.config import set_experimental_flag
from megatron.core.fp8_utils import get_fp8_context
from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed
from torch.autograd import DeviceType

from dsv3_recipes.plan.calibration import OptimizerTiming, PartTiming, StandIn
from dsv3_recipes.recipe.resolve import resolve
from dsv3_recipes.train import grouped_gemm
from dsv3_recipes.train.container import to_config_container

WARMUP = 3
PASSES = 8
ATTENTION_KERNEL = re.compile(r"fmha|flash|sdpa|fused_attn|cudnn.*(attn|sdpa)", re.I)
GEMM_KERNEL = re.compile(r"gemm|nvjet|cutlass|xmma|cublas|wgmma|matmul|Kernel2", re.I)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_single_rank(seed: int = 1234) -> None:
    """torch.distributed and Megatron's groups for one process on one GPU."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    torch.cuda.set_device(0)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl", rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel()
    model_parallel_cuda_manual_seed(seed)


def container(stand: StandIn):
    """The stand-in's ConfigContainer as the train entry sets it up: Bridge's precision setup, the
    finalized model, DDP and optimizer configs, and Megatron-Core's experimental switch (fused MLA RoPE,
    the fused routing-map padding)."""
    cfg = to_config_container(resolve(stand.recipe))
    set_experimental_flag(cfg.dist.enable_megatron_core_experimental)
    cfg.mixed_precision.finalize()
    cfg.mixed_precision.setup(cfg.model, cfg.optimizer, cfg.ddp)
    cfg.ddp.finalize()
    cfg.optimizer.finalize()
    cfg.model.finalize()
    return cfg


def build(stand: StandIn) -> torch.nn.Module:
    """The stand-in's model on this GPU (Float16Module-wrapped, as Bridge builds it)."""
    cfg = container(stand)
    (model,) = cfg.model.provide_distributed_model(ddp_config=cfg.ddp, wrap_with_ddp=False)
    return model


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module"):  # Float16Module
        model = model.module
    return model


def _seconds(fn: Callable[[], None], passes: int = PASSES) -> float:
    for _ in range(WARMUP):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(passes):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / passes


def _shares(fn: Callable[[], None]) -> tuple[float, float, float, float]:
    """GPU-time shares of GEMM and attention kernels, kernels launched and seconds of kernel time per
    pass (two passes, after the timed ones: warm)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        fn()
        torch.cuda.synchronize()
    total = gemm = attention = launches = 0.0
    for event in prof.key_averages():
        t = event.self_device_time_total
        if event.device_type != DeviceType.CUDA or t <= 0:  # kernels only: CPU ops repeat their time
            continue
        total += t
        launches += event.count
        if ATTENTION_KERNEL.search(event.key):
            attention += t
        elif GEMM_KERNEL.search(event.key):
            gemm += t
    return (gemm / total, attention / total, launches / 2, total / 2 / 1e6) if total else (0.0, 0.0, 0.0, 0.0)


def _part(forward: Callable[[], torch.Tensor], grad_of: Callable[[torch.Tensor], torch.Tensor]) -> PartTiming:
    def forward_backward() -> None:
        out = forward()
        out.backward(grad_of(out))

    def forward_only() -> None:
        with torch.no_grad():
            forward()

    forward_backward_s, forward_s = _seconds(forward_backward), _seconds(forward_only)
    gemm, attention, kernels, kernel_s = _shares(forward_backward)
    return PartTiming(
        forward_backward_s=forward_backward_s,
        forward_s=forward_s,
        gemm_share=gemm,
        attention_share=attention,
        kernels=kernels,
        kernel_s=kernel_s,
    )


def _token_batch(stand: StandIn) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids and their positions for one micro-batch of the stand-in."""
    m = stand.recipe.model
    device = torch.cuda.current_device()
    tokens = torch.randint(0, m.vocab_size, (stand.moe_micro_batch, m.seq_length), device=device)
    return tokens, torch.arange(m.seq_length, device=device).unsqueeze(0).expand_as(tokens)


def measure_case(stand: StandIn) -> dict:
    """Every part of one stand-in, timed; the dict ``plan.calibration.from_dict`` reads per case."""
    wrapped = build(stand)
    model = _unwrap(wrapped)
    config = model.config
    m = stand.recipe.model
    seq, batch = m.seq_length, stand.moe_micro_batch
    device = torch.cuda.current_device()
    tokens, positions = _token_batch(stand)
    hidden = torch.randn(seq, batch, m.hidden_size, device=device, dtype=torch.bfloat16, requires_grad=True)
    ones = torch.ones_like

    def layer(index: int) -> Callable[[], torch.Tensor]:
        module = model.decoder.layers[index]

        def run() -> torch.Tensor:
            with get_fp8_context(config, module.layer_number - 1):
                return module(hidden_states=hidden, attention_mask=None)[0]

        return run

    def moe_block() -> torch.Tensor:
        module = model.decoder.layers[1]
        with get_fp8_context(config, module.layer_number - 1):
            return module.mlp(hidden)[0]

    def embedding() -> torch.Tensor:
        return model.embedding(input_ids=tokens, position_ids=positions)

    def head() -> torch.Tensor:
        logits, _ = model.output_layer(model.decoder.final_layernorm(hidden))
        return model.compute_language_model_loss(tokens, logits)

    def whole() -> torch.Tensor:
        return wrapped(input_ids=tokens, position_ids=positions, attention_mask=None, labels=tokens)

    parts = {
        "dense_layer": _part(layer(0), torch.randn_like),
        "moe_layer": _part(layer(1), torch.randn_like),
        "moe_block": _part(moe_block, torch.randn_like),
        "embedding": _part(embedding, torch.randn_like),
        "head": _part(head, ones),
    }
    whole_part = _part(whole, ones)
    result = {"label": stand.label, **{k: dataclasses.asdict(v) for k, v in parts.items()}}
    result["whole_model_s"] = whole_part.forward_backward_s

    def beyond_parts(field: str) -> float:  # the whole model's excess over its parts: the MTP depth
        return getattr(whole_part, field) - sum(
            getattr(parts[k], field) for k in ("dense_layer", "moe_layer", "embedding", "head")
        )

    result["mtp"] = (
        dataclasses.asdict(
            PartTiming(
                forward_backward_s=beyond_parts("forward_backward_s"),
                forward_s=beyond_parts("forward_s"),
                gemm_share=whole_part.gemm_share,
                attention_share=whole_part.attention_share,
                kernels=beyond_parts("kernels"),
                kernel_s=beyond_parts("kernel_s"),
            )
        )
        if m.mtp_num_layers
        else None
    )
    return result


def measure_step(stand: StandIn) -> dict:
    """What a train step of one rank adds around the stand-in's passes, as Megatron runs it: the whole
    stand-in wrapped in Megatron's DDP (its gradient hooks and buffers, no gradient-accumulation fusion
    without apex) with the recipe's FP8 parameters, then the step after the backward (gradient
    finalization, the distributed optimizer, zeroing the buffers). Per micro-batch: its
    forward+backward so wrapped; per step: the rest. With the stand-in's parameter count, so that the
    planner scales both to a rank's parameters."""
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.optimizer import get_megatron_optimizer

    fp8_params = stand.parent.mixed_precision.fp8_param_gather and stand.fp8_recipe is not None
    stepped = dataclasses.replace(stand, precision=stand.precision | {"fp8_param_gather": fp8_params})
    cfg = container(stepped)
    (model,) = cfg.model.provide_distributed_model(ddp_config=cfg.ddp, wrap_with_ddp=True)
    optimizer = get_megatron_optimizer(cfg.optimizer, [model], use_gloo_process_groups=False)
    tokens, positions = _token_batch(stepped)

    def forward_backward() -> None:
        loss = model(input_ids=tokens, position_ids=positions, attention_mask=None, labels=tokens)
        loss.backward(torch.ones_like(loss))

    def accumulating() -> None:  # a micro-batch before the step's last: its gradients stay in the buffers
        with model.no_sync():
            forward_backward()

    def after_backward() -> None:
        finalize_model_grads([model])
        optimizer.step()
        model.zero_grad_buffer()
        optimizer.zero_grad()

    def train_step() -> None:
        forward_backward()
        after_backward()

    micro_batch = _seconds(accumulating)
    model.zero_grad_buffer()
    step = _seconds(train_step)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "param_tensors": sum(1 for _ in model.parameters()),
        "fp8_params": fp8_params,
        "wrapped_forward_backward_s": micro_batch,
        "after_backward_s": step - micro_batch,
    }


def release() -> None:
    """Give the last case's memory back before the next one is built."""
    gc.collect()
    torch.cuda.empty_cache()


ADAM_STATES = {  # "master/exp_avg/exp_avg_sq" -> TE FusedAdam arguments, as Megatron's optimizer passes them
    "fp32/fp32/fp32": dict(master_weights=True, use_decoupled_grad=True),
    "fp32/bf16/bf16": dict(
        master_weights=True,
        use_decoupled_grad=True,
        exp_avg_dtype=torch.bfloat16,
        exp_avg_sq_dtype=torch.bfloat16,
        store_param_remainders=True,
    ),
}


def measure_optimizer(params: int = 2**28, chunk: int = 2**24) -> OptimizerTiming:
    """One Adam step and one gradient-norm pass over ``params`` bf16 parameters, per parameter."""
    from transformer_engine.pytorch.optimizers import FusedAdam, multi_tensor_applier
    from transformer_engine.pytorch.optimizers import multi_tensor_l2norm as l2norm

    adam = {}
    for states, kwargs in ADAM_STATES.items():
        weights = [
            torch.nn.Parameter(torch.randn(chunk, device="cuda", dtype=torch.bfloat16))
            for _ in range(params // chunk)
        ]
        for w in weights:
            w.decoupled_grad = torch.randn(chunk, device="cuda", dtype=torch.float32)
        optimizer = FusedAdam(weights, lr=1e-4, **kwargs)
        adam[states] = _seconds(optimizer.step, passes=4) / params
        del optimizer, weights
        torch.cuda.empty_cache()
    grads = [torch.randn(chunk, device="cuda", dtype=torch.bfloat16) for _ in range(params // chunk)]
    overflow = torch.zeros(1, dtype=torch.int, device="cuda")
    norm = _seconds(lambda: multi_tensor_applier(l2norm, overflow, [grads], False), passes=4) / params
    return OptimizerTiming(adam_s_per_param=adam, grad_norm_s_per_param=norm)


@contextlib.contextmanager
def as_trained(stand: StandIn):
    """The stand-in built and timed as its recipe trains: the recipe's environment (TE reads its NVTE_*
    switches when a module is built or called), and Python's collector as Megatron's train loop runs it.
    With ``train.manual_gc`` (every recipe's default) the loop turns automatic collection off and
    collects between steps; left on here, a full collection of the million objects Megatron and TE hold
    (~0.5 s) lands inside some part's eight timed passes and adds tens of ms to each, which a host-bound
    part cannot hide. The train entry's shim for TE's one-launch grouped GEMM too: without it the
    proxy's stand-in (which asks for that path in its env) failed at its first forward on the H200 of
    2026-12-07 (TE "requires CUDA m_splits"). The previous environment and collector state come back
    after; the shim stays (it changes nothing for a layer that did not ask for the path)."""
    saved = {name: os.environ.get(name) for name in stand.env}
    collecting = gc.isenabled()
    os.environ.update(stand.env)
    grouped_gemm.install()
    if stand.parent.train.manual_gc:
        gc.collect()
        gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def quiet() -> object:
    """Megatron and TE log per module build; the benchmark prints its own lines."""
    import logging

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)
