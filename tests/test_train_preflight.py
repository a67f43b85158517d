"""The train entry's container check: what the image lacks stops the job in one line, before any model
is built. Transformer Engine's FP8 verdict needs a GPU: here it is stubbed; benchmarks/shrunk_runs.sh
runs the real one (MXFP8 asked of an H200) and records it under benchmarks/results/."""

import pytest

from dsv3_recipes import recipes
from dsv3_recipes.launch.submit import recipe_of
from dsv3_recipes.recipe import rules
from dsv3_recipes.recipe.schema import RecipeError
from dsv3_recipes.train import preflight
from dsv3_recipes.train.entry import pretrain


@pytest.fixture
def fp8_runs_here(monkeypatch):
    monkeypatch.setattr(preflight, "fp8_support", lambda fp8_recipe: (True, ""))


def test_deepep_dispatcher_without_deep_ep_names_the_backend(fp8_runs_here, monkeypatch):
    monkeypatch.setattr(rules, "importable", lambda module: module != "deep_ep_cpp")
    with pytest.raises(RecipeError, match=r"^model.moe_flex_dispatcher_backend: 'deepep' needs DeepEP's"):
        preflight.check_container(recipe_of(recipes.get("h100_fp8_blockwise")))


def test_hybridep_is_checked_on_its_own(fp8_runs_here, monkeypatch):
    monkeypatch.setattr(rules, "importable", lambda module: module != "hybrid_ep_cpp")
    with pytest.raises(RecipeError, match=r"'hybridep' needs DeepEP's hybrid_ep_cpp"):
        preflight.check_container(recipe_of(recipes.get("gb200_mxfp8_256gpu")))
    preflight.check_container(recipe_of(recipes.get("h100_fp8_blockwise")))  # deepep is present here


def test_gradient_accumulation_fusion_needs_apex_or_te(fp8_runs_here, monkeypatch):
    task = recipes.get("proxy_1gpu")
    task.recipe.model.gradient_accumulation_fusion = True
    absent = {"fused_weight_gradient_mlp_cuda"}
    monkeypatch.setattr(rules, "importable", lambda module: module not in absent)
    preflight.check_container(recipe_of(task))  # TE's GEMM stands in for apex's kernels
    absent.add("transformer_engine")
    with pytest.raises(RecipeError, match=r"^model.gradient_accumulation_fusion: needs apex's \S+ or Trans"):
        preflight.check_container(recipe_of(task))


def test_fp8_recipe_the_gpu_cannot_run_uses_te_reason(monkeypatch):
    monkeypatch.setattr(rules, "importable", lambda module: True)
    verdicts = {"mxfp8": (False, "needs compute capability 10.0")}
    monkeypatch.setattr(preflight, "fp8_support", lambda fp8_recipe: verdicts.get(fp8_recipe, (True, "")))
    with pytest.raises(
        RecipeError, match=r"^mixed_precision.fp8_recipe: 'mxfp8' does not run on this GPU \(needs"
    ):
        preflight.check_container(recipe_of(recipes.get("gb200_mxfp8_256gpu")))


def test_train_entry_stops_with_one_line_and_exit_2(fp8_runs_here, monkeypatch, capsys):
    monkeypatch.setattr(rules, "importable", lambda module: False)
    with pytest.raises(SystemExit) as stop:
        pretrain(recipe_of(recipes.get("h100_fp8_blockwise")))
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dsv3: error: model.moe_flex_dispatcher_backend:")
