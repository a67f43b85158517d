"""The pipeline layout language: parsing, stage placement and Megatron's validation rules."""

import dataclasses

import fiddle as fdl
import pytest

from dsv3_recipes.recipe import models
from dsv3_recipes.recipe.layout import (
    default_stages,
    parse_layout,
    pipeline_stages,
    stages_of_rank,
    validate_stages,
)
from dsv3_recipes.recipe.schema import RecipeError

E, T, M, L = "embedding", "decoder", "mtp", "loss"


@pytest.fixture(scope="module")
def dsv3():
    return fdl.build(models.deepseek_v3_671b())


def test_gb200_layout_is_32_stages_of_61_layers():
    stages = parse_layout("Et|(tt|)*30L")
    assert len(stages) == 32
    assert stages[0] == [E, T]
    assert stages[1:31] == [[T, T]] * 30
    assert stages[31] == [L]
    assert sum(s.count(T) for s in stages) == 1 + 2 * 30  # 61


def test_mtp_goes_with_the_loss_in_the_last_stage():
    stages = parse_layout("Et|(tt|)*30mL")
    assert len(stages) == 32 and stages[-1] == [M, L]


def test_symbol_repeats_and_cosmetic_commas():
    # Bridge's PP16 layout: 1 + 14 + 1 stages, 4 + 14 x 4 + 1 = 61 decoders.
    stages = parse_layout("Et*4|(t*4|)*14tmL")
    assert stages[0] == [E, T, T, T, T] and stages[1:15] == [[T] * 4] * 14 and stages[15] == [T, M, L]
    # Megatron's docstring example: commas are cosmetic, stages may hold only 'm' or only 'L'.
    assert parse_layout("Ett|(tt|)*2,m|L") == [[E, T, T], [T, T], [T, T], [M], [L]]
    assert parse_layout("E|t*12|L") == [[E], [T] * 12, [L]]


@pytest.mark.parametrize(
    "layout",
    ["Et|x|L", "((tt|)*2)*2L", "Et|(tt|)L", "Et t|L"],
    ids=["unknown-symbol", "nested-parens", "group-without-count", "space"],
)
def test_unparseable_layouts_name_the_field(layout):
    with pytest.raises(RecipeError, match=r"^model\.pipeline_model_parallel_layout: .*allowed: E t m L"):
        parse_layout(layout)


def test_stage_i_runs_on_rank_i_mod_pp_as_virtual_stage_i_div_pp(dsv3):
    model = dataclasses.replace(
        dsv3,
        pipeline_model_parallel_size=8,
        virtual_pipeline_model_parallel_size=4,
        pipeline_model_parallel_layout="Et|(tt|)*30L",
        mtp_num_layers=None,
    )
    stages = pipeline_stages(model)
    rank0 = stages_of_rank(stages, 0)
    assert [s.index for s in rank0] == [0, 8, 16, 24]
    assert [s.vp_rank for s in rank0] == [0, 1, 2, 3]
    assert rank0[0].decoder_ids == (0,)
    assert rank0[1].decoder_ids == (15, 16)  # stage 8 follows 1 + 7 x 2 = 15 decoders
    last = stages_of_rank(stages, 7)
    assert last[-1].layers == (L,) and last[-1].decoder_ids == ()
    assert [d for s in stages for d in s.decoder_ids] == list(range(61))
    assert rank0[0].describe() == "E,t" and rank0[1].describe() == "t*2"


def test_vpp_is_implied_by_the_layout_when_unset(dsv3):
    model = dataclasses.replace(
        dsv3,
        pipeline_model_parallel_size=8,
        virtual_pipeline_model_parallel_size=None,
        pipeline_model_parallel_layout="Et|(tt|)*30mL",
    )
    assert max(s.vp_rank for s in pipeline_stages(model)) == 3


def test_default_split_puts_embedding_first_and_mtp_with_loss_last():
    assert default_stages(16, pp=2, vpp=1, mtp_layers=1) == [[E] + [T] * 8, [T] * 8 + [M, L]]
    assert default_stages(8, pp=2, vpp=2, mtp_layers=0) == [[E, T, T], [T, T], [T, T], [T, T, L]]
    with pytest.raises(RecipeError, match=r"^model\.num_layers: 61 layers do not split evenly over"):
        default_stages(61, pp=8, vpp=1, mtp_layers=0)


@pytest.mark.parametrize(
    ("layout", "pp", "vpp", "mtp", "message"),
    [
        ("Et|(tt|)*29L", 8, 4, 0, "31 stages cannot be spread over pipeline_model_parallel_size=8"),
        ("Et|(tt|)*30L", 8, 2, 0, r"32 stages, but PP x VPP = 8 x 2 = 16"),
        ("Et|(tt|)*30|L", 8, None, 0, "33 stages cannot be spread"),  # '|L' after '|' adds an empty stage
        ("Et|(tt|)*29|ttttL", 8, 4, 0, "has 63 decoder layers 't' but model.num_layers is 61"),
        ("Et|(tt|)*30L", 8, 4, 1, "has 0 MTP layers 'm' but model.mtp_num_layers is 1"),
        ("Et|(tt|)*30mL", 8, 4, 0, "has 1 MTP layers 'm' but model.mtp_num_layers is None"),
        ("t|E(tt|)*30L", 8, 4, 0, "must start with exactly one embedding"),
        ("Et|(tt|)*30", 8, 4, 0, "must end with exactly one loss"),
        ("Et|(tt|)*29tm|tL", 8, 4, 1, "decoder layers 't' must all come before the MTP layers"),
    ],
)
def test_layouts_megatron_would_refuse(layout, pp, vpp, mtp, message):
    stages = parse_layout(layout)
    with pytest.raises(RecipeError, match=r"^model\.pipeline_model_parallel_layout: .*" + message):
        validate_stages(stages, pp, vpp, num_layers=61, mtp_layers=mtp)


def test_mtp_must_sit_in_the_last_virtual_stage_of_its_rank():
    # PP2 x VPP2: stage 1 is rank 1's first virtual stage; stage 2 (empty) and 3 are the last ones.
    stages = parse_layout("Ett|m||L")
    with pytest.raises(RecipeError, match="MTP layers 'm' must be in the last virtual stage"):
        validate_stages(stages, pp=2, vpp=2, num_layers=2, mtp_layers=1)
    assert validate_stages(parse_layout("Et|t|m|L"), pp=2, vpp=None, num_layers=2, mtp_layers=1) == 2
