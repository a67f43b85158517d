"""Where one training step's GPU time goes: a torch.profiler Chrome trace, kernel by kernel, in categories.

    python -m dsv3_recipes.report.kernel_profile TRACE [--steps N ...] [--json OUT]
    python -m dsv3_recipes.report.kernel_profile A.json B.json --label TorchTitan --label proxy --md OUT

Reads the trace torch.profiler's ``export_chrome_trace`` writes (``.json`` or ``.json.gz``): Megatron-Bridge
0.6.2's PyTorch profiler (``<tensorboard_dir>/../torch_profile/rank-<r>.json.gz``) and TorchTitan's
(``<save_traces_folder>/iteration_<N>/rank<r>_trace.json``). Each ``ProfilerStep#N`` range is one step.

A kernel's name alone does not say whether a cuBLAS GEMM belongs to an expert, the shared expert or the
output layer, so each kernel is traced back to the CPU side: its correlation id names the launch
(``cudaLaunchKernel``, ``cuLaunchKernel``, ``cudaGraphLaunch``) and the launch's thread and time give the
ranges open around it (ATen ops, autograd Functions, ``record_function`` ranges such as the project's
``dsv3::<part>`` module ranges, ``nn.Module`` frames of a trace with stacks). A backward kernel runs inside
``autograd::engine::evaluate_function: <Node>``, whose sequence number is the forward op's: the forward
op's ranges then say which module the backward belongs to. What matches no rule is "other", listed by name.

Per step: milliseconds per category (kernel time, so streams that overlap count twice: ``stream_overlap_ms``
says how much), the top kernels of each, the step's wall time (its ``ProfilerStep`` range on the host),
the GPU's busy time (union of kernel, copy and set intervals) and its idle time, between the step's first
and last kernel (host overhead: launches, syncs) and outside them (before the first, after the last).

Launch-side module: standard library only.
"""

from __future__ import annotations

import argparse
import bisect
import gzip
import json
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

KIND = "dsv3-kernel-profile"

ATTENTION_FWD = "attention forward"
ATTENTION_BWD = "attention backward"
EXPERT_GEMM = "expert GEMMs"
DENSE_GEMM = "dense/shared-expert GEMMs"
ROUTER = "router + permute/unpermute"
ELEMENTWISE = "norms + element-wise"
OUTPUT = "output layer + cross-entropy"
EMBEDDING = "embedding"
OPTIMIZER = "optimizer"
FP8 = "FP8 casts"
COMMUNICATION = "communication"
COPIES = "memory copies/sets"
OTHER = "other"
CATEGORIES = (
    ATTENTION_FWD,
    ATTENTION_BWD,
    EXPERT_GEMM,
    DENSE_GEMM,
    ROUTER,
    ELEMENTWISE,
    OUTPUT,
    EMBEDDING,
    OPTIMIZER,
    FP8,
    COMMUNICATION,
    COPIES,
    OTHER,
)

# The model part a CPU range stands for; the innermost range that matches one names the kernel's part.
# "dsv3::<part>" ranges come from the train side's ProfileRanges; the rest are Megatron-Core, Transformer
# Engine and TorchTitan class, autograd Function and ATen op names as torch.profiler records them.
PARTS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (part, re.compile(pattern))
    for part, pattern in (
        ("optimizer", r"^Optimizer\.(step|zero_grad)#|^dsv3::optimizer$"),
        (
            "experts",
            r"^dsv3::experts$|GroupedMLP|SequentialMLP|GroupedLinear|_grouped_mm|GroupedMm|GroupedExperts",
        ),
        (
            "router",
            r"^dsv3::router$|TopKRouter|TokenChoiceTopKRouter|RouterGating|TopkScore|topk_with_score|AuxLoss",
        ),
        ("shared_expert", r"^dsv3::shared_expert$|SharedExpertMLP|shared_experts"),
        ("dense_mlp", r"^dsv3::dense_mlp$"),
        ("moe", r"^dsv3::moe$|MoELayer|TokenDispatcher|TokenReorderer|^dsv3::dispatch$"),
        ("output_layer", r"^dsv3::output_layer$|LinearWithGradAccumulationAndAsyncCommunication"),
        ("loss", r"^dsv3::loss$|CrossEntropy|cross_entropy|nll_loss|log_softmax"),
        ("embedding", r"^dsv3::embedding$|LanguageModelEmbedding|^EmbeddingBackward|^aten::embedding"),
        (
            "attention",
            r"^dsv3::attention$|SelfAttention|DotProductAttention|scaled_dot_product|FusedAttnFunc",
        ),
        # Containers whose own kernels belong to no part above (model = what GPTModel does itself: the loss).
        ("model", r"^dsv3::model$"),
        ("block", r"^dsv3::(decoder|mtp)$"),
    )
)
BACKWARD_RANGE = "autograd::engine::evaluate_function"


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


COMM_KERNEL = _rx(r"nccl|all_?reduce|all_?gather|reduce_?scatter|all_?to_?all|multimem|cross_device_reduce")
OPTIMIZER_KERNEL = _rx(r"multi_tensor|adam|FusedOptimizer|lpnorm|l2norm|_foreach_norm")
ATTENTION_KERNEL = _rx(r"flash|fmha|sdpa|fused_attn|attention|flash_attn|cudnn.*(fprop|bprop)")
BACKWARD_KERNEL = _rx(r"bwd|bprop|backward|dgrad|cutlassB|dq_dk_dv|dot_do_o|convert_dq")
GEMM_KERNEL = _rx(
    r"gemm|nvjet|xmma|cutlass|wgmma|s16816|s1688|cublas|splitKreduce|gemv|triton_tem_\w*mm|_mm_kernel|matmul"
)
GROUPED_GEMM_KERNEL = _rx(r"GroupProblemShape|grouped|group_gemm")
FP8_KERNEL = _rx(r"cast_transpose|quantize|fp8|amax|scale_inv|block_scaled|blockwise|mxfp8")
PERMUTE_KERNEL = _rx(
    r"permute|row_id_map|sort_chunks|chunk_sort|topk|histogram|histc|bincount|radix_?sort|DeviceRadix|"
    r"DeviceScan|fill_indices|moe_"
)
PERMUTE_FUSED = _rx(r"^triton_\w+_fused_\w*(gather|scatter|sort|topk|histc)")
CE_KERNEL = _rx(r"cross_entropy|log_softmax|nll_loss|logsumexp|online_softmax")
EMBEDDING_KERNEL = _rx(r"embedding|indexSelect|index_select")
ELEMENTWISE_KERNEL = _rx(
    r"norm|rsqrt|elementwise|vectorized|unrolled|reduce_kernel|triton_|fill|copy|swiglu|silu|gelu|"
    r"act_|activation|rope|rotary|cat_|CatArray|where|index|softmax|mul|add|sum|mean|dropout|scale"
)
GRAPH_LAUNCH = _rx(r"GraphLaunch")
COMPILED = re.compile(r"Torch-Compiled Region|CompiledFunction|CompiledFxGraph")
SYNC_CALL = _rx(r"Synchronize|cudaMemcpy(?!Async)")
TORCH_OP = _rx(r"^(aten|c10d|record_param_comms)::?")
MM_OP = re.compile(r"^aten::(mm|addmm|bmm|baddbmm|matmul|linear|_grouped_mm|_scaled_mm)$")
RANGE_CATS = {"cpu_op", "user_annotation", "python_function"}
LAUNCH_CATS = {"cuda_runtime", "cuda_driver"}
GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}
_STEP = re.compile(r"^ProfilerStep#(\d+)$")


@dataclass
class Range:
    name: str
    ts: float
    end: float
    seq: int | None  # autograd sequence number (forward op and its backward node share it)
    shapes: object = None  # "Input Dims" when the trace recorded shapes
    parent: int | None = None


@dataclass
class Kernel:
    name: str
    ts: float
    end: float
    kind: str  # kernel, gpu_memcpy, gpu_memset
    chain: list[int] = field(default_factory=list)  # enclosing ranges on the launching thread, outer first
    thread: tuple = ()
    launch_ts: float | None = None
    graph: bool = False


@dataclass
class Classifier:
    """Names what a kernel is. Two rules for traces without the project's ranges (TorchTitan's):
    ``experts``: a GEMM whose innermost matrix-multiply op has a dimension of this size is the router's
    (the trace must record shapes; TE's GEMMs are not ATen ops and have none). ``eager_gemms_are_output``:
    TorchTitan compiles each transformer block and the loss, not the output layer, so a GEMM launched
    outside every compiled graph is the output layer's. (No shape names the output layer: with 8 x 4096
    tokens a step has as many tokens as the vocabulary has entries.)"""

    experts: int | None = None
    eager_gemms_are_output: bool = False

    def part(self, names: list[str]) -> str | None:
        for name in reversed(names):
            for part, pattern in PARTS:
                if pattern.search(name):
                    return part
        return None

    def gemm_dims(self, shapes: list[object]) -> set[int]:
        dims: set[int] = set()
        for shape in shapes:
            for dim in _flatten(shape):
                dims.add(dim)
        return dims

    def category(self, kernel: str, kind: str, names: list[str], backward: bool, shapes: list[object]) -> str:
        if kind != "kernel":
            return COPIES
        if COMM_KERNEL.search(kernel):
            return COMMUNICATION
        part = self.part(names)
        if part == "optimizer" or OPTIMIZER_KERNEL.search(kernel):
            return OPTIMIZER
        if ATTENTION_KERNEL.search(kernel):
            return ATTENTION_BWD if backward or BACKWARD_KERNEL.search(kernel) else ATTENTION_FWD
        if FP8_KERNEL.search(kernel) and not GEMM_KERNEL.search(kernel):
            return FP8
        if GEMM_KERNEL.search(kernel):
            dims = self.gemm_dims(shapes)
            if part == "experts" or GROUPED_GEMM_KERNEL.search(kernel):
                return EXPERT_GEMM
            if part == "router" or (self.experts is not None and self.experts in dims):
                return ROUTER
            if part in ("output_layer", "model"):
                return OUTPUT
            if self.eager_gemms_are_output and part is None and not any(COMPILED.search(n) for n in names):
                return OUTPUT
            return DENSE_GEMM
        if part in ("router", "moe"):
            return ROUTER
        if part in ("output_layer", "loss", "model"):
            return OUTPUT
        if part == "embedding":
            return EMBEDDING
        if PERMUTE_KERNEL.search(kernel) or PERMUTE_FUSED.search(kernel):
            return ROUTER
        if CE_KERNEL.search(kernel):
            return OUTPUT
        if EMBEDDING_KERNEL.search(kernel):
            return EMBEDDING
        if ELEMENTWISE_KERNEL.search(kernel):
            return ELEMENTWISE
        return OTHER


def _flatten(shape: object) -> list[int]:
    if isinstance(shape, int):
        return [shape]
    if isinstance(shape, list):
        return [d for item in shape for d in _flatten(item)]
    return []


def load_events(path: str | Path) -> list[dict]:
    """The trace's events; a truncated or non-trace file fails naming the file."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as f:
            data = json.load(f)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{path}: not a readable Chrome trace ({str(err).splitlines()[0]})") from None
    events = data.get("traceEvents") if isinstance(data, dict) else data
    if not isinstance(events, list):
        raise ValueError(f"{path}: no traceEvents list: not a torch.profiler Chrome trace")
    return events


def _number(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


class Trace:
    """The trace's CPU ranges per thread (with each one's parent), its launches and its GPU work."""

    def __init__(self, events: list[dict]):
        self.ranges: list[Range] = []
        self.by_thread: dict[tuple, list[int]] = defaultdict(list)
        launches: dict[int, tuple[tuple, float, str]] = {}
        gpu: list[tuple[dict, int | None]] = []
        self.runtime: list[tuple[str, float, float, tuple]] = []  # name, start, end, thread
        for e in events:
            if not isinstance(e, dict) or e.get("ph") != "X":
                continue
            ts, dur = _number(e.get("ts")), _number(e.get("dur"))
            if ts is None or dur is None:
                continue
            cat, args = e.get("cat"), e.get("args") or {}
            if cat in RANGE_CATS:
                thread = (e.get("pid"), e.get("tid"))
                seq = args.get("Sequence number")
                self.by_thread[thread].append(len(self.ranges))
                self.ranges.append(
                    Range(
                        str(e.get("name", "")),
                        ts,
                        ts + dur,
                        seq if isinstance(seq, int) else None,
                        args.get("Input Dims"),
                    )
                )
            elif cat in LAUNCH_CATS:
                self.runtime.append((str(e.get("name", "")), ts, ts + dur, (e.get("pid"), e.get("tid"))))
                correlation = args.get("correlation")
                if isinstance(correlation, int):
                    launches[correlation] = ((e.get("pid"), e.get("tid")), ts, str(e.get("name", "")))
            elif cat in GPU_CATS:
                correlation = args.get("correlation")
                gpu.append((e, correlation if isinstance(correlation, int) else None))
        self._link_parents()
        self.kernels: list[Kernel] = []
        pending: dict[tuple, list[tuple[float, int]]] = defaultdict(list)
        for e, correlation in gpu:
            ts = float(e["ts"])
            kernel = Kernel(str(e.get("name", "")), ts, ts + float(e["dur"]), str(e.get("cat")))
            launch = launches.get(correlation) if correlation is not None else None
            if launch is not None:
                kernel.thread, kernel.launch_ts = launch[0], launch[1]
                kernel.graph = bool(GRAPH_LAUNCH.search(launch[2]))
                pending[launch[0]].append((launch[1], len(self.kernels)))
            self.kernels.append(kernel)
        for thread, items in pending.items():
            for index, chain in zip(
                (i for _, i in sorted(items)), self._chains(thread, sorted(t for t, _ in items)), strict=True
            ):
                self.kernels[index].chain = chain
        # The op that made each autograd node: the earliest range with its sequence number that is not the
        # node's own backward (the evaluate_function range and the node range directly inside it).
        self.forward_of_seq: dict[int, int] = {}
        for index, r in enumerate(self.ranges):
            if r.seq is None or self._is_backward_node(r):
                continue
            known = self.forward_of_seq.get(r.seq)
            if known is None or r.ts < self.ranges[known].ts:
                self.forward_of_seq[r.seq] = index

    def _link_parents(self) -> None:
        """Each range's innermost enclosing range on its thread (ranges on one thread nest)."""
        for indices in self.by_thread.values():
            indices.sort(key=lambda i: (self.ranges[i].ts, -self.ranges[i].end))
            stack: list[int] = []
            for i in indices:
                r = self.ranges[i]
                while stack and self.ranges[stack[-1]].end <= r.ts:
                    stack.pop()
                r.parent = stack[-1] if stack else None
                stack.append(i)

    def _chains(self, thread: tuple, times: list[float]) -> list[list[int]]:
        """For sorted launch times on a thread: the ranges open at each, outer first."""
        indices = self.by_thread.get(thread, [])
        starts = [self.ranges[i].ts for i in indices]
        out = []
        for t in times:
            position = bisect.bisect_right(starts, t) - 1
            chain: list[int] = []
            candidate = indices[position] if position >= 0 else None
            # The latest range starting before t, or one of its ancestors, is the innermost open one.
            while candidate is not None and self.ranges[candidate].end < t:
                candidate = self.ranges[candidate].parent
            while candidate is not None:
                chain.append(candidate)
                candidate = self.ranges[candidate].parent
            out.append(chain[::-1])
        return out

    def ancestors(self, index: int) -> list[int]:
        chain = []
        current: int | None = index
        while current is not None:
            chain.append(current)
            current = self.ranges[current].parent
        return chain[::-1]

    def _is_backward_node(self, r: Range) -> bool:
        if r.name.startswith(BACKWARD_RANGE):
            return True
        parent = self.ranges[r.parent] if r.parent is not None else None
        return parent is not None and parent.name.startswith(BACKWARD_RANGE) and parent.seq == r.seq

    def context(self, kernel: Kernel) -> tuple[list[str], bool, list[object]]:
        """The names a kernel is classified by, whether it ran in the backward pass, and the shapes of the
        ops around it. A backward kernel also gets its forward op's ranges (by autograd sequence number)."""
        names = [self.ranges[i].name for i in kernel.chain]
        # Only the innermost matrix-multiply op's shapes: outer ranges (a compiled graph's call) hold the
        # inputs of a whole block.
        mm = [i for i in kernel.chain if MM_OP.match(self.ranges[i].name) and self.ranges[i].shapes]
        shapes = [self.ranges[mm[-1]].shapes] if mm else []
        backward_nodes = [i for i in kernel.chain if self.ranges[i].name.startswith(BACKWARD_RANGE)]
        if not backward_nodes:
            return names, False, shapes
        seq = self.ranges[backward_nodes[-1]].seq
        forward = self.forward_of_seq.get(seq) if seq is not None else None
        if forward is None:
            return names, True, shapes
        forward_names = [self.ranges[i].name for i in self.ancestors(forward)]
        return forward_names + names, True, shapes

    def steps(self) -> dict[int, Range]:
        found: dict[int, Range] = {}
        for r in self.ranges:
            match = _STEP.match(r.name)
            if match:
                found.setdefault(int(match.group(1)), r)
        return found


def _union_ms(intervals: list[tuple[float, float]]) -> float:
    total, current_start, current_end = 0.0, None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start  # type: ignore[operator]
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start  # type: ignore[operator]
    return total / 1000


def _short(name: str, width: int = 110) -> str:
    name = name.removeprefix("void ")
    return name if len(name) <= width else name[: width - 1] + "…"


def profile_step(
    trace: Trace, kernels: list[Kernel], window: tuple[float, float] | None, classifier: Classifier, top: int
) -> dict:
    """One step's kernels summed up (``window``: its host range in µs; None for a trace without steps)."""
    categories: dict[str, dict] = {
        c: {"ms": 0.0, "count": 0, "kernels": defaultdict(lambda: [0.0, 0])} for c in CATEGORIES
    }
    category_of: dict[int, str] = {}
    for k in kernels:
        names, backward, shapes = trace.context(k)
        category = category_of[id(k)] = classifier.category(k.name, k.kind, names, backward, shapes)
        entry = categories[category]
        entry["ms"] += (k.end - k.ts) / 1000
        entry["count"] += 1
        by_name = entry["kernels"][k.name]
        by_name[0] += (k.end - k.ts) / 1000
        by_name[1] += 1
    ordered = sorted(kernels, key=lambda k: k.ts)
    busy = _union_ms([(k.ts, k.end) for k in ordered])
    kernel_sum = sum(k.end - k.ts for k in ordered) / 1000
    first = ordered[0].ts if ordered else 0.0
    last = max((k.end for k in ordered), default=0.0)
    span = (last - first) / 1000
    wall = (window[1] - window[0]) / 1000 if window else span
    gaps, reach = [], first
    waited_for = dict.fromkeys(CATEGORIES, 0.0)  # idle before each kernel, by the category of the kernel
    waited_in: dict[str, float] = defaultdict(float)  # ... and by the innermost range that launched it
    for before, after in zip(ordered, ordered[1:], strict=False):
        reach = max(reach, before.end)
        if after.ts > reach:
            gaps.append((after.ts - reach, before, after))
            waited_for[category_of[id(after)]] += (after.ts - reach) / 1000
            launcher = trace.ranges[after.chain[-1]].name if after.chain else "(no range)"
            waited_in[launcher] += (after.ts - reach) / 1000
    gaps.sort(key=lambda g: -g[0])
    syncs = [
        (name, start, end, thread)
        for name, start, end, thread in trace.runtime
        if SYNC_CALL.search(name) and (window is None or window[0] <= start <= window[1])
    ]
    synced_in: dict[str, int] = defaultdict(int)  # each sync by the range that made it and its outer op
    for _, start, _, thread in syncs:
        (chain,) = trace._chains(thread, [start])
        names = [trace.ranges[i].name for i in chain]
        # The innermost range that is not a torch op (a module, an annotation) and the op it called.
        owner = max((i for i, n in enumerate(names) if not TORCH_OP.match(n)), default=None)
        shown = names[owner : owner + 2] if owner is not None else names[:1]
        synced_in[" > ".join(shown) or "(no range)"] += 1
    return {
        "wall_ms": wall,
        "gpu_span_ms": span,
        "busy_ms": busy,
        "idle_between_kernels_ms": span - busy,
        "idle_outside_kernels_ms": max(wall - span, 0.0),
        "kernel_sum_ms": kernel_sum,
        "stream_overlap_ms": kernel_sum - busy,
        "kernels": len(ordered),
        "graph_kernels": sum(k.graph for k in ordered),
        "unlinked_kernels": sum(k.launch_ts is None for k in ordered),
        "host_syncs": {
            "count": len(syncs),
            "ms": sum(end - start for _, start, end, _ in syncs) / 1000,
            "by_range": [
                {"range": _short(name, 120), "count": count}
                for name, count in sorted(synced_in.items(), key=lambda kv: -kv[1])[: top * 2]
            ],
        },
        "categories": {
            name: {
                "ms": entry["ms"],
                "count": entry["count"],
                "idle_before_ms": waited_for[name],  # the GPU waiting for the host to launch these
                "top": [
                    {"name": _short(kname, 300), "ms": ms, "count": count}
                    for kname, (ms, count) in sorted(entry["kernels"].items(), key=lambda kv: -kv[1][0])[:top]
                ],
            }
            for name, entry in categories.items()
        },
        "idle_by_launching_range": [
            {"range": _short(name, 120), "ms": ms}
            for name, ms in sorted(waited_in.items(), key=lambda kv: -kv[1])[: top * 2]
        ],
        "largest_gaps": [
            {
                "ms": gap / 1000,
                "after": _short(before.name, 120),
                "before": _short(after.name, 120),
                "launched_in": [trace.ranges[i].name for i in after.chain][-3:],
            }
            for gap, before, after in gaps[: top * 2]
        ],
    }


def profile(
    path: str | Path,
    steps: list[int] | None = None,
    step_offset: int = 0,
    classifier: Classifier | None = None,
    top: int = 5,
) -> dict:
    """Every profiled step of a trace (or the chosen ProfilerStep numbers). ``step_offset`` turns the
    profiler's step number into the training step's (TorchTitan's ProfilerStep#N is its step N+1). The
    summary names the trace by its file name: its directory is the GPU machine's, not the repository's."""
    classifier = classifier or Classifier()
    trace = Trace(load_events(path))
    found = trace.steps()
    if steps:
        missing = sorted(set(steps) - set(found))
        if missing:
            raise ValueError(
                f"{path}: no ProfilerStep#{missing[0]} (the trace has {sorted(found) or 'none'})"
            )
        found = {n: found[n] for n in steps}
    by_step: dict[int | None, list[Kernel]] = defaultdict(list)
    starts = sorted((r.ts, r.end, n) for n, r in found.items())
    for k in trace.kernels:
        t = k.launch_ts if k.launch_ts is not None else k.ts
        owner = next((n for start, end, n in starts if start <= t <= end), None)
        if owner is not None or not found:
            by_step[owner].append(k)
    results = []
    for n in sorted(found) if found else [None]:
        window = (found[n].ts, found[n].end) if n is not None else None
        summary = profile_step(trace, by_step.get(n, []), window, classifier, top)
        results.append({"profiler_step": n, "train_step": None if n is None else n + step_offset, **summary})
    return {"kind": KIND, "trace": Path(path).name, "steps": results}


def _fmt(ms: float) -> str:
    return f"{ms:.1f}"


def side_by_side(profiles: list[dict], labels: list[str], top: int = 3) -> str:
    """Markdown: ms per category in one step of each profile (its first step), differences against the
    first, then the kernels behind each category."""
    steps = [p["steps"][0] for p in profiles]
    head = [
        "category",
        *[f"{label} ms" for label in labels],
        *[f"{label} − {labels[0]}" for label in labels[1:]],
    ]
    lines = [
        "| " + " | ".join(head) + " |",
        "| " + " | ".join("---" for _ in head) + " |",
    ]

    def row(title: str, values: list[float]) -> None:
        diffs = [f"{v - values[0]:+.1f}" for v in values[1:]]
        lines.append("| " + " | ".join([title, *map(_fmt, values), *diffs]) + " |")

    for name in CATEGORIES:
        values = [s["categories"][name]["ms"] for s in steps]
        if any(values):
            row(name, values)
    row("**kernel time (sum)**", [s["kernel_sum_ms"] for s in steps])
    row("streams overlapping (− from the sum)", [s["stream_overlap_ms"] for s in steps])
    row("**GPU busy**", [s["busy_ms"] for s in steps])
    row("GPU idle between kernels (host overhead)", [s["idle_between_kernels_ms"] for s in steps])
    row("GPU idle before the first / after the last kernel", [s["idle_outside_kernels_ms"] for s in steps])
    row("**step wall time**", [s["wall_ms"] for s in steps])
    counts = " | ".join(str(s["kernels"]) for s in steps)
    lines.append(f"| kernels launched | {counts} |" + " |" * (len(steps) - 1))
    trained = ", ".join(f"{label}: step {s['train_step']}" for label, s in zip(labels, steps, strict=True))
    lines += ["", f"Profiled steps: {trained}.", "", "Which kernels (top per category, ms in the step):", ""]
    lines += ["| category | " + " | ".join(labels) + " |", "| --- |" + " --- |" * len(labels)]
    for name in CATEGORIES:
        if not any(s["categories"][name]["ms"] for s in steps):
            continue
        cells = [
            "<br>".join(
                f"{_fmt(k['ms'])} ×{k['count']} `{_short(k['name'], 70)}`"
                for k in s["categories"][name]["top"][:top]
            )
            or "-"
            for s in steps
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Where the GPU waits for the host: idle between kernels before the kernels of each category (ms):",
        "",
        "| category | " + " | ".join(labels) + " |",
        "| --- |" + " --- |" * len(labels),
    ]
    for name in CATEGORIES:
        waits = [s["categories"][name].get("idle_before_ms", 0.0) for s in steps]
        if any(waits):
            lines.append(f"| {name} | " + " | ".join(map(_fmt, waits)) + " |")
    lines += ["", "The same idle time by the innermost range that launched the kernel waited for (ms):", ""]
    for label, s in zip(labels, steps, strict=True):
        ranges = "; ".join(
            f"{_fmt(r['ms'])} `{r['range']}`" for r in s.get("idle_by_launching_range", [])[:6]
        )
        lines.append(f"- {label}: {ranges or 'none'}")
    lines += ["", "Largest GPU gaps inside the step (the host late: a sync, launches, Python):", ""]
    for label, s in zip(labels, steps, strict=True):
        gaps = "; ".join(
            f"{g['ms']:.2f} ms before `{_short(g['before'], 50)}` ({' > '.join(g['launched_in'][-2:])})"
            for g in s["largest_gaps"][:3]
        )
        lines.append(f"- {label}: {gaps or 'none'}; host syncs: {s['host_syncs']['count']}")
    lines += [
        "",
        "Host syncs (each drains the GPU's queue) by the range that made them and the op it called:",
        "",
    ]
    for label, s in zip(labels, steps, strict=True):
        made = "; ".join(f"{r['count']} `{r['range']}`" for r in s["host_syncs"].get("by_range", []))
        lines.append(f"- {label}: {made or 'none'}")
    return "\n".join(lines) + "\n"


def summary_text(result: dict) -> str:
    """A compact per-step listing of one profile."""
    out = []
    for s in result["steps"]:
        out.append(
            f"{result['trace']}: step {s['train_step']} wall {s['wall_ms']:.1f} ms, "
            f"GPU busy {s['busy_ms']:.1f}, idle between kernels {s['idle_between_kernels_ms']:.1f}, "
            f"outside {s['idle_outside_kernels_ms']:.1f}; {s['kernels']} kernels "
            f"({s['unlinked_kernels']} without a launch, {s['graph_kernels']} from graphs), "
            f"{s['host_syncs']['count']} host syncs"
        )
        for name in CATEGORIES:
            c = s["categories"][name]
            if c["count"]:
                first = c["top"][0]
                out.append(
                    f"  {name:<34} {c['ms']:8.2f} ms {c['count']:6d}  e.g. {_short(first['name'], 60)}"
                )
    return "\n".join(out)


def _load(path: str, args: argparse.Namespace) -> dict:
    if path.endswith(".json"):
        with open(path) as f:
            head = f.read(200)
        if f'"kind": "{KIND}"' in head:
            with open(path) as f:
                return json.load(f)
    return profile(
        path,
        steps=args.steps,
        step_offset=args.step_offset,
        classifier=Classifier(experts=args.experts, eager_gemms_are_output=args.eager_gemms_are_output),
        top=args.top,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="Chrome traces (.json/.json.gz) or summaries written by --json")
    p.add_argument("--steps", type=int, nargs="*", help="ProfilerStep numbers to keep (default: every one)")
    p.add_argument("--step-offset", type=int, default=0, help="training step = ProfilerStep number + this")
    p.add_argument(
        "--eager-gemms-are-output",
        action="store_true",
        help="a GEMM outside every compiled graph is the output layer's (TorchTitan's per-block compile)",
    )
    p.add_argument(
        "--experts", type=int, help="a GEMM with this dimension is the router's (traces with shapes)"
    )
    p.add_argument("--top", type=int, default=5, help="kernels listed per category")
    p.add_argument("--label", action="append", help="one per input, for the side-by-side table")
    p.add_argument("--json", help="write the summary (a list of them for several inputs) here")
    p.add_argument("--md", help="write the side-by-side markdown table here (several inputs)")
    args = p.parse_args(argv)
    labels = args.label or [Path(i).name for i in args.inputs]
    if len(labels) != len(args.inputs):
        p.error(f"--label: {len(labels)} given for {len(args.inputs)} inputs")
    try:
        results = [_load(path, args) for path in args.inputs]
    except (OSError, ValueError) as err:
        print(f"kernel_profile: error: {err}", file=sys.stderr)
        return 1
    if args.json:
        Path(args.json).write_text(json.dumps(results[0] if len(results) == 1 else results, indent=1) + "\n")
    for result in results:
        print(summary_text(result))
    if len(results) > 1:
        empty = [label for label, r in zip(labels, results, strict=True) if not r["steps"]]
        if empty:
            print(f"kernel_profile: error: no steps in {', '.join(empty)}", file=sys.stderr)
            return 1
        table = side_by_side(results, labels)
        if args.md:
            Path(args.md).write_text(table)
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
