"""Megatron's pipeline layout language, parsed and checked without importing Megatron.

A layout such as ``"Et|(tt|)*30mL"`` lists the pipeline stages in layer order, separated by ``|``:
``E`` embedding, ``t`` a transformer decoder layer, ``m`` an MTP layer, ``L`` the loss (final norm,
output layer, cross entropy). ``x*n`` repeats one symbol, ``(...)*n`` repeats a group (no nesting),
commas are cosmetic. Stage ``i`` runs on pipeline rank ``i % PP`` as its virtual stage ``i // PP``.
The semantics follow Megatron-Core 0.19's ``PipelineParallelLayerLayout`` (parse_str_to_list and
validate_layer_layout), so a layout refused here would be refused by Megatron at start-up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from dsv3_recipes.recipe.schema import ModelConfig, RecipeError

LAYOUT_FIELD = "model.pipeline_model_parallel_layout"
SYMBOLS = {"E": "embedding", "t": "decoder", "m": "mtp", "L": "loss"}

# Megatron unrolls "(group)*n" first, then "x*n", each in one pass over the string.
_GROUP_REPEAT = re.compile(r"\(([^)]+)\)\*(\d+)")
_SYMBOL_REPEAT = re.compile(r"(.)\*(\d+)")


@dataclass(frozen=True)
class Stage:
    """One pipeline stage (a model chunk): where it runs and which layers it builds."""

    index: int  # position in the layout, i.e. layer order
    pp_rank: int
    vp_rank: int
    layers: tuple[str, ...]  # 'embedding' | 'decoder' | 'mtp' | 'loss', in order
    decoder_ids: tuple[int, ...]  # global indices of its decoder layers (0-based)

    @property
    def mtp_layers(self) -> int:
        return self.layers.count("mtp")

    def describe(self) -> str:
        """Compact form for tables: ``E,t*2`` or ``t*4,m,L``."""
        parts: list[str] = []
        for kind in self.layers:
            symbol = next(s for s, k in SYMBOLS.items() if k == kind)
            if parts and parts[-1].rstrip("*0123456789") == symbol:
                count = int(parts[-1].partition("*")[2] or 1) + 1
                parts[-1] = f"{symbol}*{count}"
            else:
                parts.append(symbol)
        return ",".join(parts) or "(empty)"


def parse_layout(layout: str) -> list[list[str]]:
    """The stages of a layout string, each a list of layer kinds (no checks against the model)."""
    text = layout.replace(",", "")
    text = _GROUP_REPEAT.sub(lambda m: m.group(1) * int(m.group(2)), text)
    text = _SYMBOL_REPEAT.sub(lambda m: m.group(1) * int(m.group(2)), text)
    stages = []
    for stage_text in text.split("|"):
        bad = sorted({c for c in stage_text if c not in SYMBOLS})
        if bad:
            raise RecipeError(
                LAYOUT_FIELD,
                f"{layout!r}: unknown symbol(s) {', '.join(map(repr, bad))} after expanding repeats "
                "(nested parentheses are not supported); allowed: E t m L | (group)*n x*n and commas",
            )
        stages.append([SYMBOLS[c] for c in stage_text])
    return stages


def default_stages(num_layers: int, pp: int, vpp: int, mtp_layers: int) -> list[list[str]]:
    """Megatron's split without a layout: equal decoder counts, embedding first, MTP and loss last."""
    total = pp * vpp
    if num_layers % total:
        raise RecipeError(
            "model.num_layers",
            f"{num_layers} layers do not split evenly over PP x VPP = {pp} x {vpp} stages; "
            f"set {LAYOUT_FIELD} (e.g. an uneven 'Et*k|...|t*kmL' split)",
        )
    per_stage = num_layers // total
    stages = [["decoder"] * per_stage for _ in range(total)]
    stages[0].insert(0, "embedding")
    stages[-1].extend(["mtp"] * mtp_layers + ["loss"])
    return stages


def validate_stages(
    stages: list[list[str]], pp: int, vpp: Optional[int], num_layers: int, mtp_layers: int
) -> int:
    """Megatron's layout rules; returns the virtual pipeline size the layout implies."""
    if len(stages) % pp:
        raise RecipeError(
            LAYOUT_FIELD, f"{len(stages)} stages cannot be spread over pipeline_model_parallel_size={pp}"
        )
    implied_vpp = len(stages) // pp
    if vpp is not None and vpp != implied_vpp:
        raise RecipeError(
            LAYOUT_FIELD,
            f"{len(stages)} stages, but PP x VPP = {pp} x {vpp} = {pp * vpp} "
            "(model.virtual_pipeline_model_parallel_size)",
        )
    flat = [kind for stage in stages for kind in stage]
    counts = {kind: flat.count(kind) for kind in SYMBOLS.values()}
    if counts["embedding"] != 1 or not flat or flat[0] != "embedding":
        raise RecipeError(LAYOUT_FIELD, "must start with exactly one embedding 'E' (and have no other)")
    if counts["loss"] != 1 or flat[-1] != "loss":
        raise RecipeError(LAYOUT_FIELD, "must end with exactly one loss 'L' (and have no other)")
    if counts["decoder"] != num_layers:
        raise RecipeError(
            LAYOUT_FIELD,
            f"has {counts['decoder']} decoder layers 't' but model.num_layers is {num_layers}",
        )
    if counts["mtp"] != mtp_layers:
        raise RecipeError(
            LAYOUT_FIELD,
            f"has {counts['mtp']} MTP layers 'm' but model.mtp_num_layers is {mtp_layers or None}",
        )
    if counts["mtp"]:
        first_mtp = flat.index("mtp")
        if "decoder" in flat[first_mtp:]:
            raise RecipeError(LAYOUT_FIELD, "decoder layers 't' must all come before the MTP layers 'm'")
        holding = [i for i, stage in enumerate(stages) if "mtp" in stage]
        if len(holding) != 1:
            raise RecipeError(LAYOUT_FIELD, "all MTP layers 'm' must be in one stage")
        if holding[0] // pp != implied_vpp - 1:
            raise RecipeError(
                LAYOUT_FIELD, "MTP layers 'm' must be in the last virtual stage of their pipeline rank"
            )
    return implied_vpp


def pipeline_stages(model: ModelConfig) -> list[Stage]:
    """The model's stages in layer order: its layout if set, else Megatron's even split."""
    pp = model.pipeline_model_parallel_size  # >= 1: ModelConfig checks its sizes when built
    mtp_layers = model.mtp_num_layers or 0
    if model.pipeline_model_parallel_layout:
        kinds = parse_layout(model.pipeline_model_parallel_layout)
        vpp = validate_stages(
            kinds, pp, model.virtual_pipeline_model_parallel_size, model.num_layers, mtp_layers
        )
    else:
        vpp = model.virtual_pipeline_model_parallel_size or 1
        kinds = default_stages(model.num_layers, pp, vpp, mtp_layers)
    stages = []
    next_decoder = 0
    for index, layers in enumerate(kinds):
        decoders = layers.count("decoder")
        stages.append(
            Stage(
                index=index,
                pp_rank=index % pp,
                vp_rank=index // pp,
                layers=tuple(layers),
                decoder_ids=tuple(range(next_decoder, next_decoder + decoders)),
            )
        )
        next_decoder += decoders
    return stages


def stages_of_rank(stages: list[Stage], pp_rank: int) -> list[Stage]:
    """The model chunks one pipeline rank holds, in virtual-stage order."""
    return sorted((s for s in stages if s.pp_rank == pp_rank), key=lambda s: s.vp_rank)


def render_layout(stages: list[list[str]]) -> str:
    """The layout string of a stage list, in Megatron's notation: ``[[E, t], [t, t] x 6, [L]]`` is
    ``"Et|(tt|)*6L"``. Runs of identical stages before the last one become ``(...|)*n``."""
    symbol_of = {kind: symbol for symbol, kind in SYMBOLS.items()}

    def stage_text(stage: list[str]) -> str:
        parts: list[str] = []
        i = 0
        while i < len(stage):
            j = i
            while j < len(stage) and stage[j] == stage[i]:
                j += 1
            n = j - i
            parts.append(symbol_of[stage[i]] * n if n <= 2 else f"{symbol_of[stage[i]]}*{n}")
            i = j
        return "".join(parts)

    texts = [stage_text(s) for s in stages]
    out: list[str] = []
    i = 0
    while i < len(texts) - 1:
        j = i
        while j + 1 < len(texts) - 1 and texts[j + 1] == texts[i]:
            j += 1
        n = j - i + 1
        out.append(f"({texts[i]}|)*{n}" if n > 1 else texts[i] + "|")
        i = j + 1
    out.append(texts[-1])
    return "".join(out)


MAX_SHRUNK_DECODERS_PER_STAGE = 2


def shrink_layout(layout: str, num_stages: int) -> str:
    """The same layout pattern over ``num_stages`` stages with few decoder layers in each.

    The first and the last stage keep their place and their embedding, MTP and loss; the middle stages
    are the parent's middle stages in order (repeated if more are needed, the leading ones kept if fewer);
    each stage's decoder count is divided by one factor, so that no stage holds more than two decoders,
    while a stage with none keeps none and a stage with some keeps at least one.
    """
    stages = parse_layout(layout)
    if num_stages < 2 or len(stages) < 2:
        raise RecipeError(LAYOUT_FIELD, f"{layout!r}: a pipeline layout needs at least 2 stages")
    first, middle, last = stages[0], stages[1:-1], stages[-1]
    # A two-stage parent has no middle stage: further stages repeat the first one's decoders.
    pool = middle or [[kind for kind in first if kind == "decoder"]]
    shrunk = [first, *(pool[i % len(pool)] for i in range(num_stages - 2)), last]
    most = max(stage.count("decoder") for stage in shrunk)
    factor = max(1, -(-most // MAX_SHRUNK_DECODERS_PER_STAGE))

    def scaled(stage: list[str]) -> list[str]:
        n = stage.count("decoder")  # contiguous: embedding before, MTP and loss after (validate_stages)
        if not n:
            return stage
        start = stage.index("decoder")
        return [*stage[:start], *["decoder"] * -(-n // factor), *stage[start + n :]]

    return render_layout([scaled(s) for s in shrunk])
