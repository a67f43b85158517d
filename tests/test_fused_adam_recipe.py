"""optimizer.fused_adam: off by default, and refused in one line where TE's param-remainder kernel, which
it replaces, would not run (launch side: no torch)."""

import pytest

from dsv3_recipes.launch.submit import build_task, recipe_of
from dsv3_recipes.recipe.schema import RecipeError


def test_off_by_default_and_taken_by_the_precision_aware_proxy():
    assert not recipe_of(build_task("proxy_1gpu")).optimizer.fused_adam
    assert recipe_of(
        build_task("proxy_1gpu", ["optimizer.fused_adam=True"])
    ).optimizer.fused_adam  # validated


@pytest.mark.parametrize(
    "override, needs",
    [
        ("optimizer.exp_avg_dtype=fp32", "optimizer.exp_avg_dtype='bf16', got 'fp32'"),
        ("optimizer.main_params_dtype=bf16", "optimizer.main_params_dtype='fp32', got 'bf16'"),
        ("optimizer.optimizer=sgd", "optimizer.optimizer='adam', got 'sgd'"),
        ("mixed_precision.fp8_recipe=tensorwise", "mixed_precision.fp8_recipe=None or 'delayed', got"),
    ],
)
def test_refused_where_te_keeps_no_param_remainders(override: str, needs: str):
    with pytest.raises(
        RecipeError, match=f"^optimizer.fused_adam: is TE's param-remainder AdamW: needs {needs}"
    ):
        recipe_of(build_task("proxy_1gpu", ["optimizer.fused_adam=True", override]))
