"""Shrink a recipe to the GPUs at hand: the same flags at a size that trains in minutes.

A 671B recipe fails on 1024 GPUs after an hour in the queue if one of its flags cannot run with the
others. ``shrink(task, gpus=1)`` returns a copy of the task whose recipe differs from its parent only in

- **sizes**: layers (one dense layer and the MTP layers kept), width, heads, experts (top-k, groups and
  group top-k stay valid), vocabulary (mock data only), global batch, run length (the LR schedule's
  lengths scaled with it), evaluation length, the parallel sizes that no longer fit, and the pipeline
  layout, rewritten in the same pattern over the fewer layers when PP > 1 survives;
- **substitutions**, each with its reason, where the target GPU or the machine cannot run a feature:
  the fixes of the rules the shrunk recipe breaks (``recipe.rules.SHRINK_FIXES``: MXFP8 on Hopper ->
  blockwise, the DeepEP/HybridEP dispatcher without ``deep_ep`` -> alltoall, EP overlap at EP=1 -> off,
  no corpus -> mock data, ...), the same rules that refuse the unshrunk recipe.

Everything else is the parent's, field for field. What changed is recorded in ``recipe.shrink``
(``dsv3 show NAME --shrink N --json`` prints it), and the shrunk recipe is planned before it is
returned: a recipe whose features cannot all be substituted is refused with the field that blocks it.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable

import fiddle as fdl

from dsv3_recipes.recipe import hardware, rules
from dsv3_recipes.recipe.layout import parse_layout, shrink_layout
from dsv3_recipes.recipe.parallel import data_parallel
from dsv3_recipes.recipe.rules import Capabilities
from dsv3_recipes.recipe.schema import FieldChange, Recipe, RecipeError, ShrinkRecord

DEFAULT_STEPS = 10
MOE_LAYERS_WITHOUT_PP = 3  # with one dense layer in front: every layer kind, four layers in all
MICRO_BATCHES_PER_PIPELINE_STAGE = 2  # gradient accumulation runs, and 1F1B reaches its steady state
EVAL_ITERS = 2
# The width a shrunk model trains at. MLA's head dimensions and latent rank stay the parent's: they pick
# the attention and RoPE kernels. 32 experts keep DSV3's 8 routing groups (4 experts each, top-4 groups,
# top-8 experts), so group-limited routing and TE's fused router run as at full size.
SHRUNK_WIDTH = {
    "hidden_size": 1024,
    "ffn_hidden_size": 4096,
    "num_attention_heads": 8,
    "q_lora_rank": 512,
    "num_moe_experts": 32,
    "moe_ffn_hidden_size": 512,
}
MOCK_VOCAB_SIZE = 32768


class _Edits:
    """Writes fields of the shrunk config and records each change against the parent's value."""

    def __init__(self, config: fdl.Config[Recipe], parent: Recipe, keep: Iterable[str]):
        self.config, self.parent = config, parent
        self.keep = tuple(keep)
        self.written: dict[str, object] = {}
        self.changed: list[FieldChange] = []
        self.substituted: list[FieldChange] = []

    def kept(self, path: str) -> bool:
        """The caller set this field (a CLI override): the shrink leaves it as given."""
        return any(path == k or path.startswith(k + ".") for k in self.keep)

    def get(self, path: str) -> object:
        obj: object = self.parent
        for part in path.split("."):
            obj = getattr(obj, part)
        return obj

    def current(self, path: str) -> object:
        """The value in the shrunk recipe so far: an earlier edit's, else the parent's."""
        return self.written[path] if path in self.written else self.get(path)

    def _write(self, path: str, value: object) -> None:
        head, _, name = path.rpartition(".")
        section = self.config
        for part in filter(None, head.split(".")):
            section = getattr(section, part)
        setattr(section, name, value)

    def _set(self, path: str, value: object, reason: str, into: list[FieldChange]) -> None:
        if self.kept(path) or self.current(path) == value:
            return
        self._write(path, value)
        self.written[path] = value
        into[:] = [c for c in into if c.field != path]
        into.append(FieldChange(path, json.dumps(self.get(path)), json.dumps(value), reason))

    def pin(self, path: str) -> None:
        """Write the parent's built value of a field the parent derives (e.g. the MLPerf LR from the
        GBS), so that it stays the parent's when the sizes it derives from change."""
        self._write(path, self.get(path))

    def size(self, path: str, value: object, reason: str) -> None:
        self._set(path, value, reason, self.changed)

    def substitute(self, path: str, value: object, reason: str) -> None:
        self._set(path, value, reason, self.substituted)


def _power_of_two_at_most(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


def _parallel_sizes(e: _Edits, gpus: int) -> dict[str, int]:
    """PP first (up to about sqrt(N), so that EP keeps room), then TP, then EP over what is left."""
    m = e.parent.model

    def chosen(name: str, fitted: int) -> int:
        return getattr(m, name) if e.kept(f"model.{name}") else fitted

    pp = chosen(
        "pipeline_model_parallel_size",
        min(m.pipeline_model_parallel_size, _power_of_two_at_most(math.isqrt(gpus))),
    )
    tp = chosen("tensor_model_parallel_size", min(m.tensor_model_parallel_size, max(1, gpus // (pp * 2))))
    cp = chosen("context_parallel_size", 1)
    etp = chosen("expert_tensor_parallel_size", min(m.expert_tensor_parallel_size, tp))
    ep = chosen(
        "expert_model_parallel_size",
        min(m.expert_model_parallel_size, _power_of_two_at_most(gpus // (pp * etp))),
    )
    return {
        "tensor_model_parallel_size": tp,
        "pipeline_model_parallel_size": pp,
        "context_parallel_size": cp,
        "expert_tensor_parallel_size": etp,
        "expert_model_parallel_size": ep,
    }


def _shrink_model(e: _Edits, gpus: int, sizes: dict[str, int], mock_data: bool) -> None:
    m = e.parent.model
    why = f"fits {gpus} GPU(s)"
    for name, value in sizes.items():
        e.size(f"model.{name}", value, why)
    pp = sizes["pipeline_model_parallel_size"]

    dense = min(m.first_k_dense_replace, 1)
    if pp == 1:
        e.size("model.pipeline_model_parallel_layout", None, "one pipeline stage")
        e.size("model.virtual_pipeline_model_parallel_size", None, "one pipeline stage")
        layers = min(m.num_layers, dense + MOE_LAYERS_WITHOUT_PP)
    elif m.pipeline_model_parallel_layout:
        stages = len(parse_layout(m.pipeline_model_parallel_layout))
        vpp = stages // m.pipeline_model_parallel_size
        layout = shrink_layout(m.pipeline_model_parallel_layout, pp * vpp)
        e.size("model.pipeline_model_parallel_layout", layout, "the parent's pattern over fewer layers")
        layers = sum(stage.count("decoder") for stage in parse_layout(layout))
    else:
        chunks = pp * (m.virtual_pipeline_model_parallel_size or 1)
        layers = chunks * -(-(dense + MOE_LAYERS_WITHOUT_PP) // chunks)
    if e.kept("model.num_layers"):
        layers = m.num_layers
    if layers - dense < 1:
        raise RecipeError("model.num_layers", f"{layers} layer(s) leave no MoE layer after {dense} dense")
    e.size("model.num_layers", layers, "fewer layers, every kind kept")
    e.size("model.first_k_dense_replace", dense, "one dense layer in front, as DSV3's first three")

    for name, width in SHRUNK_WIDTH.items():
        parent = getattr(m, name)
        if parent is not None:
            e.size(f"model.{name}", min(parent, width), "narrower")
    moe_ffn = e.current("model.moe_ffn_hidden_size")
    shared_experts = m.moe_shared_expert_intermediate_size // m.moe_ffn_hidden_size
    e.size("model.moe_shared_expert_intermediate_size", shared_experts * moe_ffn, "same shared experts")
    if mock_data:
        e.size("model.vocab_size", min(m.vocab_size, MOCK_VOCAB_SIZE), "mock tokens need no full vocabulary")


def _shrink_schedule(e: _Edits, gpus: int, steps: int, data_parallel: int, pp: int) -> int:
    """Global batch, run length and the LR schedule's lengths; returns the shrunk global batch."""
    t, s = e.parent.train, e.parent.scheduler
    gbs = t.micro_batch_size * data_parallel * MICRO_BATCHES_PER_PIPELINE_STAGE * pp
    e.size("train.global_batch_size", gbs, f"{MICRO_BATCHES_PER_PIPELINE_STAGE * pp} micro-batches a step")
    gbs = e.current("train.global_batch_size")  # type: ignore[assignment]
    steps = e.current("train.train_iters") if e.kept("train.train_iters") else steps  # type: ignore[assignment]
    run_length = "run length"
    if t.train_samples is not None and not e.kept("train.train_iters"):
        samples = steps * gbs
        e.size("train.train_samples", samples, run_length)
        ratio = samples / t.train_samples
        if not e.parent.mlperf.enabled:
            e.size("scheduler.lr_warmup_samples", round(s.lr_warmup_samples * ratio), "scaled with the run")
            if s.lr_decay_samples is not None:
                e.size("scheduler.lr_decay_samples", round(s.lr_decay_samples * ratio), "scaled with the run")
        return gbs
    e.size("train.train_iters", steps, run_length)
    e.size("train.train_samples", None, run_length)
    if e.parent.mlperf.enabled or not t.train_iters:
        return gbs  # the MLPerf rules fix 4 warmup steps and a 12,000-step schedule at any run length
    ratio = steps / t.train_iters
    warmup = min(steps, round(s.lr_warmup_iters * ratio))
    scaled = "scaled with the run"
    e.size("scheduler.lr_warmup_iters", warmup, scaled)
    if s.lr_decay_iters is not None:
        e.size("scheduler.lr_decay_iters", max(warmup, round(s.lr_decay_iters * ratio)), scaled)
    if s.lr_wsd_decay_iters is not None:
        wsd = min(round(s.lr_wsd_decay_iters * ratio), steps - warmup)
        e.size("scheduler.lr_wsd_decay_iters", wsd, scaled)
    return gbs


def _substitute(e: _Edits, caps: Capabilities, mock_data: bool) -> None:
    """The fix of each rule the shrunk recipe breaks on the machine that will run it (``rules.SHRINK_FIXES``),
    each rule judged on the recipe as the fixes before it left it."""
    recipe = fdl.build(e.config)
    for rule in rules.SHRINK_FIXES:
        if rule.fix is None or rule.problem(recipe, caps) is None:
            continue
        for fix in rule.fix(recipe, caps):
            e.substitute(fix.field, fix.value, fix.reason)
        recipe = fdl.build(e.config)
    if mock_data and e.parent.tokenizer.tokenizer_type != "NullTokenizer":
        e.substitute("tokenizer.tokenizer_type", "NullTokenizer", "mock data needs no tokenizer")
        e.substitute("tokenizer.tokenizer_model", None, "mock data needs no tokenizer")


def _shrink_mlperf(e: _Edits, steps: int, gbs: int) -> None:
    if not e.parent.mlperf.enabled:
        return
    e.pin("optimizer.lr")  # the benchmark's LR, not the rule's value at the shrunk GBS
    if not e.parent.mlperf.proxy:
        e.substitute(
            "mlperf.proxy",
            True,
            "the benchmark's scale rules (GBS >= 15360, the LR formula, 1,024 evaluation sequences) "
            "cannot hold on a few GPUs; the log says proxy",
        )
    e.size("mlperf.eval_samples", gbs, "one evaluation batch of the shrunk global batch")
    e.size("mlperf.start_eval_step", max(1, steps // 2), "the rules' first evaluation lies beyond the run")


def shrink(
    task: fdl.Partial,
    gpus: int,
    gpu_type: str | None = None,
    steps: int = DEFAULT_STEPS,
    capabilities: Capabilities | None = None,
    keep: Iterable[str] = (),
) -> fdl.Partial:
    """A new task: ``task``'s recipe at the size of ``gpus`` GPUs of ``gpu_type`` (default: the
    recipe's), ``steps`` steps; ``keep`` names fields the caller set, which stay as given. The
    original task is not touched."""
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise RecipeError("shrink", f"the number of GPUs must be an integer >= 1, got {gpus!r}")
    if steps < 1:
        raise RecipeError("shrink", f"steps must be >= 1, got {steps}")
    parent = fdl.build(task.recipe)  # its sections check their fields; the shrunk recipe is planned below
    if parent.shrink is not None:
        raise RecipeError("shrink", f"{parent.name} is already shrunk from {parent.shrink.shrunk_from}")
    target = gpu_type or parent.launch.gpu_type
    gpu = hardware.gpu(target)
    caps = capabilities or Capabilities.here()
    if gpus > gpu.gpus_per_node and gpus % gpu.gpus_per_node:
        raise RecipeError("shrink", f"{gpus} GPUs are not whole {target} nodes of {gpu.gpus_per_node}")

    shrunk = copy.deepcopy(task)
    e = _Edits(shrunk.recipe, parent, keep)
    e.size("name", f"{parent.name}_shrunk{gpus}", "names the shrunk run")
    e.size("launch.gpu_type", target, "the GPUs at hand")
    nodes = max(1, gpus // gpu.gpus_per_node)
    e.size("launch.num_nodes", nodes, "the GPUs at hand")
    e.size("launch.gpus_per_node", gpus // nodes, "the GPUs at hand")
    if (parent.launch.nvl_segment_nodes or 0) > nodes:
        e.size("launch.nvl_segment_nodes", None, "the whole job fits in one NVLink domain")

    mock_data = not parent.dataset.data_paths
    sizes = _parallel_sizes(e, gpus)
    _shrink_model(e, gpus, sizes, mock_data)
    dp = data_parallel(
        gpus,
        sizes["tensor_model_parallel_size"],
        sizes["pipeline_model_parallel_size"],
        sizes["context_parallel_size"],
    )
    gbs = _shrink_schedule(e, gpus, steps, dp, sizes["pipeline_model_parallel_size"])
    if parent.train.eval_iters > EVAL_ITERS and not parent.mlperf.enabled:
        e.size("train.eval_iters", EVAL_ITERS, "shorter evaluation")
    if parent.logger.log_rank is not None:
        pp = sizes["pipeline_model_parallel_size"]
        e.size("logger.log_rank", gpus - gpus // pp, "the first rank of the shrunk last pipeline stage")
    _substitute(e, caps, mock_data)
    _shrink_mlperf(e, e.current("train.train_iters") or steps, gbs)  # type: ignore[arg-type]

    record = fdl.Config(
        ShrinkRecord,
        shrunk_from=parent.name,
        gpus=gpus,
        gpu_type=target,
        changed=[fdl.Config(FieldChange, **vars(c)) for c in e.changed],
        substituted=[fdl.Config(FieldChange, **vars(c)) for c in e.substituted],
    )
    if type(task) is not fdl.Partial:  # NeMo-Run's task (recipes.get): its configs stay NeMo-Run's
        from dsv3_recipes.recipes.task import as_nemo_run

        record = as_nemo_run(record)
    shrunk.recipe.shrink = record
    _check_runs(shrunk, parent.name, gpus, target)
    return shrunk


def _check_runs(task: fdl.Partial, parent: str, gpus: int, gpu_type: str) -> None:
    """The planner's verdict on the shrunk recipe, naming the field a substitution could not fix."""
    from dsv3_recipes.plan.preflight import plan

    try:
        plan(fdl.build(task.recipe))
    except RecipeError as err:
        raise RecipeError(
            err.path, f"{parent} cannot run shrunk to {gpus} x {gpu_type}: {err.problem}"
        ) from None


def summary(record: ShrinkRecord) -> str:
    """What `dsv3 show --shrink` prints first: changed, substituted (with why), and what was kept."""
    lines = [f"Shrunk from {record.shrunk_from} to {record.gpus} x {record.gpu_type}."]
    lines.append(f"Changed ({len(record.changed)}, sizes only):")
    lines += [f"  {c.field}: {c.parent} -> {c.value}  ({c.reason})" for c in record.changed]
    lines.append(f"Substituted ({len(record.substituted)}):")
    lines += [f"  {c.field}: {c.parent} -> {c.value}  ({c.reason})" for c in record.substituted] or ["  none"]
    lines.append("Kept: every other field, as the parent recipe sets it.")
    return "\n".join(lines)
