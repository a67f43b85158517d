"""MLPerf DSV3 on the launch side: the rules' formulas, the recipes, every refusal before launch, and
the config_*.sh + run_deepseek_v3_671b.sh pair rendered in dry-run mode."""

import json
import os
import shlex
import struct
import subprocess
import sys
from array import array
from pathlib import Path

import pytest

from dsv3_recipes.launch.submit import recipe_of
from dsv3_recipes.mlperf import rules
from dsv3_recipes.plan.preflight import plan
from dsv3_recipes.recipe.schema import RecipeError
from dsv3_recipes.recipes.mlperf import mlperf_gb300_256gpu, mlperf_h100_1024gpu, mlperf_proxy_1gpu

DSV3_HF_CONFIG = {  # deepseek-ai/DeepSeek-V3 config.json, the fields the check compares
    "model_type": "deepseek_v3",
    "num_hidden_layers": 61,
    "hidden_size": 7168,
    "num_attention_heads": 128,
    "n_routed_experts": 256,
    "moe_intermediate_size": 2048,
    "kv_lora_rank": 512,
}


def write_idx(path, lengths):
    """A Megatron-Core .idx file (format of megatron.core.datasets.indexed_dataset._IndexWriter)."""
    pointers = [4 * sum(lengths[:i]) for i in range(len(lengths))]
    with open(path, "wb") as f:
        f.write(rules.IDX_HEADER + struct.pack("<QBQQ", 1, 4, len(lengths), len(lengths) + 1))
        f.write(array("i", lengths).tobytes() + array("q", pointers).tobytes())
        f.write(array("q", range(len(lengths) + 1)).tobytes())


def write_tokenizer_json(directory, vocab_size, added=256):
    os.makedirs(directory, exist_ok=True)
    spec = {
        "model": {"type": "WordLevel", "vocab": {f"w{i}": i for i in range(vocab_size)}, "unk_token": "w0"},
        "added_tokens": [{"id": vocab_size + i, "content": f"<|reserved_{i}|>"} for i in range(added)],
    }
    with open(os.path.join(directory, "tokenizer.json"), "w") as f:
        json.dump(spec, f)


@pytest.fixture
def data_dir(tmp_path):
    """A DATA_DIR with [mlperf-dsv3]'s file names, a full-length validation index and a 128k tokenizer."""
    for name, lengths in (
        ("c4-train.en_6_text_document", [5000, 7000]),
        ("c4-validation-91205-samples.en_text_document", [3_000_000, 1_194_305]),
    ):
        write_idx(tmp_path / f"{name}.idx", lengths)
        (tmp_path / f"{name}.bin").touch()
    write_tokenizer_json(tmp_path / "tokenizer", rules.TOKENIZER_VOCAB)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(DSV3_HF_CONFIG))
    return tmp_path


def gb300(data_dir, **changes):
    """The GB300 recipe pointed at ``data_dir``; ``changes`` are dotted-field overrides."""
    task = mlperf_gb300_256gpu()
    r = task.recipe
    r.dataset.data_paths = [f"{data_dir}/c4-train.en_6_text_document"]
    r.dataset.validation_paths = [f"{data_dir}/c4-validation-91205-samples.en_text_document"]
    r.tokenizer.tokenizer_model = f"{data_dir}/tokenizer"
    r.checkpoint.pretrained_checkpoint = f"{data_dir}/ckpt"
    for path, value in changes.items():
        section, name = path.split(".")
        setattr(getattr(r, section), name, value)
    return recipe_of(task)


def refusal(recipe) -> RecipeError:
    """The error ``rules.check`` raises, or building the recipe raises (pass a callable for that)."""
    with pytest.raises(RecipeError) as e:
        rules.check(recipe() if callable(recipe) else recipe)
    return e.value


def test_learning_rate_and_first_eval_follow_the_rules_table():
    # training_rules.adoc "DeepSeek-V3-671B hyperparameter constraints" and mlperf-logging's RCP file.
    assert [rules.base_learning_rate(g) for g in (15360, 16384, 18432)] == [
        0.000023238,
        0.000024,
        0.000025456,
    ]
    assert [rules.first_eval_step(g) for g in (15360, 16384, 24576, 32768, 8)] == [43, 43, 43, 42, 3114]


@pytest.mark.parametrize("factory", [mlperf_gb300_256gpu, mlperf_h100_1024gpu])
def test_671b_recipes_plan_and_follow_the_rules(factory):
    task = factory()
    recipe = recipe_of(task)
    report = plan(recipe)
    assert report.sizes.world == recipe.launch.num_gpus and report.sizes.dp == 64
    assert recipe.train.global_batch_size // report.sizes.dp == 256  # the config names' "x256"
    assert recipe.optimizer.lr == 0.000024 and recipe.scheduler.lr_warmup_iters == 4
    assert (
        recipe.model.moe_aux_loss_coeff == 0.01 and recipe.tokenizer.tokenizer_type == "HuggingFaceTokenizer"
    )


def test_gb300_recipe_passes_with_seed_002_data(data_dir):
    recipe = gb300(data_dir)
    rules.check(recipe)
    assert (recipe.model.pipeline_model_parallel_size, recipe.model.expert_model_parallel_size) == (4, 64)


def test_batch_below_15360_is_refused_outside_proxy_mode(data_dir):
    error = refusal(lambda: gb300(data_dir, **{"train.global_batch_size": 8192, "optimizer.lr": 0.000016971}))
    assert error.path == "train.global_batch_size" and "15360" in str(error)


def test_learning_rate_off_the_formula_names_the_right_value(data_dir):
    error = refusal(lambda: gb300(data_dir, **{"train.global_batch_size": 15360, "optimizer.lr": 0.000024}))
    assert error.path == "optimizer.lr" and "optimizer.lr=2.3238e-05" in str(error)


@pytest.mark.parametrize(("gbs", "lr"), [(15360, 0.000023238), (16384, 0.000024), (18432, 0.000025456)])
def test_learning_rate_is_derived_from_the_batch_size(data_dir, gbs, lr):
    recipe = gb300(data_dir, **{"train.global_batch_size": gbs})  # optimizer.lr left to the rule
    assert recipe.optimizer.lr == lr
    rules.check(recipe)


def test_proxy_mode_on_the_671b_model_is_refused(data_dir):
    error = refusal(lambda: gb300(data_dir, **{"mlperf.proxy": True, "train.global_batch_size": 8192}))
    assert error.path == "mlperf.proxy" and "671B" in str(error)


def test_schedule_ends_where_the_reference_ends_it():
    recipe = recipe_of(mlperf_gb300_256gpu())
    assert (recipe.scheduler.lr_warmup_iters, recipe.scheduler.lr_decay_iters) == (4, 11996)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"scheduler.lr_warmup_iters": 10}, "scheduler.lr_warmup_iters"),
        ({"optimizer.min_lr": 1e-6}, "optimizer.min_lr"),
        ({"scheduler.lr_decay_iters": 10000}, "scheduler.lr_decay_iters"),
        ({"train.eval_interval": 10}, "train.eval_interval"),
        ({"mlperf.eval_samples": 512}, "mlperf.eval_samples"),
        ({"mlperf.target_log_ppl": 3.5}, "mlperf.target_log_ppl"),
        ({"model.moe_aux_loss_coeff": 1e-4}, "model.moe_aux_loss_coeff"),
        ({"model.moe_router_force_load_balancing": True}, "model.moe_router_force_load_balancing"),
        ({"train.train_iters": 20}, "train.train_iters"),
        ({"checkpoint.pretrained_checkpoint": None}, "checkpoint.pretrained_checkpoint"),
    ],
)
def test_fixed_hyperparameters_are_refused_when_changed(data_dir, change, field):
    assert refusal(lambda: gb300(data_dir, **change)).path == field


def test_data_dir_without_the_validation_prefix_is_refused(data_dir):
    os.remove(data_dir / "c4-validation-91205-samples.en_text_document.idx")
    error = refusal(lambda: gb300(data_dir))
    assert error.path == "dataset.validation_paths" and "does not exist" in str(error)


def test_data_dir_without_the_train_prefix_is_refused(data_dir):
    os.remove(data_dir / "c4-train.en_6_text_document.bin")
    assert refusal(lambda: gb300(data_dir)).path == "dataset.data_paths"


def test_train_shard_with_another_name_is_refused(data_dir):
    recipe = gb300(data_dir)
    recipe.dataset.data_paths = [f"{data_dir}/my_corpus_text_document"]
    assert "c4-train.en_<n>_text_document" in str(refusal(recipe))


def test_validation_file_shorter_than_1024_sequences_is_refused(data_dir):
    write_idx(data_dir / "c4-validation-91205-samples.en_text_document.idx", [4096 * 1024])
    error = refusal(lambda: gb300(data_dir))
    assert error.path == "dataset.validation_paths" and "4194305" in str(error)


def test_tokenizer_with_another_vocabulary_is_refused(data_dir):
    write_tokenizer_json(data_dir / "tokenizer", 32000)
    error = refusal(lambda: gb300(data_dir))
    assert error.path == "tokenizer.tokenizer_model" and "128000" in str(error)


def test_missing_tokenizer_is_refused(data_dir):
    os.remove(data_dir / "tokenizer" / "tokenizer.json")
    assert refusal(lambda: gb300(data_dir)).path == "tokenizer.tokenizer_model"


def test_checkpoint_of_another_model_type_is_refused(data_dir):
    (data_dir / "ckpt" / "config.json").write_text(json.dumps({**DSV3_HF_CONFIG, "model_type": "llama"}))
    error = refusal(lambda: gb300(data_dir))
    assert error.path == "checkpoint.pretrained_checkpoint" and "llama" in str(error)


def test_checkpoint_of_another_size_is_refused(data_dir):
    (data_dir / "ckpt" / "config.json").write_text(json.dumps({**DSV3_HF_CONFIG, "num_hidden_layers": 27}))
    assert "num_layers=27" in str(refusal(lambda: gb300(data_dir)))


def test_checkpoint_with_another_embedding_size_is_refused(data_dir):
    config = {**DSV3_HF_CONFIG, "vocab_size": 128256}  # re-embedded for the Llama 3.1 tokenizer
    (data_dir / "ckpt" / "config.json").write_text(json.dumps(config))
    error = refusal(lambda: gb300(data_dir))
    assert error.path == "checkpoint.pretrained_checkpoint"
    assert "vocab_size=128256" in str(error) and "another embedding size" in str(error)
    (data_dir / "ckpt" / "config.json").write_text(json.dumps({**config, "vocab_size": 129280}))
    rules.check(gb300(data_dir))


def test_megatron_checkpoint_is_checked_through_its_run_config(data_dir):
    ckpt = data_dir / "megatron"
    (ckpt / "iter_0000050").mkdir(parents=True)
    (ckpt / "latest_checkpointed_iteration.txt").write_text("50")
    sizes = {"num_layers": 61, "hidden_size": 7168, "num_attention_heads": 128, "num_moe_experts": 256}
    sizes |= {"moe_ffn_hidden_size": 2048, "kv_lora_rank": 512}
    (ckpt / "iter_0000050" / "run_config.yaml").write_text(json.dumps({"model": sizes}))  # JSON is YAML
    rules.check(gb300(data_dir, **{"checkpoint.pretrained_checkpoint": str(ckpt)}))
    (ckpt / "iter_0000050" / "run_config.yaml").write_text(
        json.dumps({"model": {**sizes, "num_moe_experts": 64}})
    )
    assert "num_moe_experts=64" in str(
        refusal(lambda: gb300(data_dir, **{"checkpoint.pretrained_checkpoint": str(ckpt)}))
    )


def test_directory_that_is_no_checkpoint_is_refused(data_dir):
    tokenizer_dir = str(data_dir / "tokenizer")
    error = refusal(lambda: gb300(data_dir, **{"checkpoint.pretrained_checkpoint": tokenizer_dir}))
    assert "neither a Megatron checkpoint" in str(error)


def test_resume_needs_a_checkpoint_and_a_fresh_run_needs_an_empty_dir(data_dir):
    ckpt_dir = data_dir / "run_ckpts"
    ckpt_dir.mkdir()
    resume = {"checkpoint.save": str(ckpt_dir), "checkpoint.load": str(ckpt_dir)}
    assert refusal(lambda: gb300(data_dir, **resume)).path == "checkpoint.load"
    (ckpt_dir / "latest_checkpointed_iteration.txt").write_text("20")
    rules.check(gb300(data_dir, **resume))
    assert refusal(lambda: gb300(data_dir, **{"checkpoint.save": str(ckpt_dir)})).path == "checkpoint.save"


def test_proxy_lifts_only_the_scale_rules():
    recipe = recipe_of(mlperf_proxy_1gpu())
    rules.check(recipe)  # GBS 8, LR 3e-4, 32 evaluation sequences: allowed in proxy mode
    assert recipe.mlperf.proxy and recipe.train.global_batch_size == 8
    recipe.mlperf.target_log_ppl = 4.0
    assert refusal(recipe).path == "mlperf.target_log_ppl"
    recipe.mlperf.target_log_ppl = 3.6
    recipe.scheduler.lr_warmup_iters = 10
    assert refusal(recipe).path == "scheduler.lr_warmup_iters"


def test_evaluation_batch_must_split_over_data_parallel_ranks(data_dir):
    error = refusal(lambda: gb300(data_dir, **{"mlperf.eval_samples": 1000}))
    assert error.path == "mlperf.eval_samples" and "data-parallel 64" in str(error)


SCRIPTS = Path(__file__).resolve().parent.parent / "experiments" / "mlperf"


def start_script(config, data_dir, tmp_path, **env):
    """``source config; DRYRUN=1 bash run_deepseek_v3_671b.sh`` with the config's placeholders filled."""
    values = {
        "ACCOUNT": "acct",
        "PARTITION": "batch",
        "LOG_DIR": str(tmp_path / "logs"),
        "IMAGE": "registry.example.com/team/dsv3-recipes:test",
        "DATA_DIR": str(data_dir),
        "MODEL_CKPT": str(data_dir / "ckpt"),
        "SUBMISSION_ORG": "ACME Labs",
        "SEED": "7",
        "DRYRUN": "1",
        "DSV3": f"{sys.executable} -m dsv3_recipes.cli",
        **env,
    }
    exports = " ".join(shlex.quote(f"{k}={v}") for k, v in values.items())
    command = f"source {SCRIPTS / config} && export {exports} && bash {SCRIPTS / 'run_deepseek_v3_671b.sh'}"
    pipe = subprocess.PIPE
    return subprocess.Popen(["bash", "-c", command], stdout=pipe, stderr=pipe, text=True)


def rendered(process):
    """The script's dry-run output: the resolved recipe (JSON) and the sbatch script after it."""
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    recipe, end = json.JSONDecoder().raw_decode(out)
    return recipe, out[end:]


def test_run_script_renders_both_configs_resume_and_refusal(data_dir, tmp_path):
    gb300_config, h100_config = "config_GB300_64x4x256xtp1pp4cp1.sh", "config_H100_128x8x256xtp2pp8cp1.sh"
    ckpt_dir = tmp_path / "run_ckpts"
    ckpt_dir.mkdir()
    (ckpt_dir / "latest_checkpointed_iteration.txt").write_text("12")
    resume = {"CHECKPOINT_DIR": str(ckpt_dir), "RESUME": "1", "SAVE_CKPT_STEPS": "5"}
    runs = {  # started together: each waits mostly on imports
        "gb300": start_script(gb300_config, data_dir, tmp_path),
        "h100": start_script(h100_config, data_dir, tmp_path, GBS="15360"),
        "resume": start_script(gb300_config, data_dir, tmp_path, **resume),
        "small_gbs": start_script(gb300_config, data_dir, tmp_path, GBS="8192"),
    }

    recipe, sbatch = rendered(runs["gb300"])
    train, model, ckpt, mlperf = recipe["train"], recipe["model"], recipe["checkpoint"], recipe["mlperf"]
    assert (train["global_batch_size"], recipe["optimizer"]["lr"]) == (16384, 0.000024)
    assert (train["seed"], train["train_iters"]) == (7, 100)
    assert (model["pipeline_model_parallel_size"], model["expert_model_parallel_size"]) == (4, 64)
    assert recipe["dataset"]["data_paths"] == [f"{data_dir}/c4-train.en_6_text_document"]
    valid = f"{data_dir}/c4-validation-91205-samples.en_text_document"
    assert recipe["dataset"]["validation_paths"] == [valid]
    assert recipe["tokenizer"]["tokenizer_model"] == f"{data_dir}/tokenizer"
    assert (ckpt["pretrained_checkpoint"], ckpt["load"]) == (f"{data_dir}/ckpt", None)
    assert (mlperf["config_filename"], mlperf["submission_org"]) == (gb300_config, "ACME Labs")
    for line in ("--nodes=64", "--ntasks-per-node=4", "--segment=16", "--account=acct", "--time=02:00:00"):
        assert f"#SBATCH {line}" in sbatch
    assert "export NCCL_NET_GDR_LEVEL=PHB" in sbatch and " /usr/local/bin/bindpcie python " in sbatch
    assert "--container-image registry.example.com/team/dsv3-recipes:test " in sbatch
    logs = tmp_path / "logs"
    assert f"{data_dir}:{data_dir},{data_dir}/ckpt:{data_dir}/ckpt,{logs}:{logs}" in sbatch

    recipe, sbatch = rendered(runs["h100"])
    model = recipe["model"]
    assert (recipe["train"]["global_batch_size"], recipe["optimizer"]["lr"]) == (15360, 0.000023238)
    assert (model["tensor_model_parallel_size"], model["pipeline_model_parallel_size"]) == (2, 8)
    assert model["virtual_pipeline_model_parallel_size"] == 4
    assert model["pipeline_model_parallel_layout"] == "Et|(tt|)*30mL"
    assert "#SBATCH --nodes=128" in sbatch and "#SBATCH --ntasks-per-node=8" in sbatch
    assert "--segment" not in sbatch

    recipe, sbatch = rendered(runs["resume"])
    ckpt = recipe["checkpoint"]
    assert ckpt["load"] == ckpt["save"] == str(ckpt_dir) and ckpt["save_interval"] == 5
    assert ckpt["load_optim"] and ckpt["load_rng"] and ckpt["save_optim"]  # step, optimizer, LR schedule, RNG
    assert f"{ckpt_dir}:{ckpt_dir}" in sbatch

    out, err = runs["small_gbs"].communicate(timeout=300)
    assert runs["small_gbs"].returncode == 2 and "#SBATCH" not in out
    assert err.strip().splitlines()[-1].startswith("dsv3: error: train.global_batch_size: 8192 is below")


PROXY_LOG = SCRIPTS.parents[1] / "benchmarks/results/mlperf/2026-11-23-h100-mlperf_proxy_1gpu-mlperf_log.txt"


def test_mlperf_check_passes_the_committed_proxy_log_on_a_login_node(on_login_node):
    out = on_login_node(f"""
from dsv3_recipes.cli import main
sys.exit(main(["mlperf-check", "{PROXY_LOG}", "--recipe", "mlperf_proxy_1gpu", "train.train_iters=40"]))
""")
    assert out.returncode == 0, out.stderr[-2000:]
    # the train.train_iters override reaches no checked value: it is parsed and accepted like the run's own
    assert out.stdout.startswith(f"PASSED: {PROXY_LOG} against mlperf-logging training_6.1.0/common.yaml")
    assert "+ proxy overrides" in out.stdout


def test_mlperf_check_fails_a_proxy_log_against_the_benchmark_rules(capsys):
    from dsv3_recipes.cli import main

    assert main(["mlperf-check", str(PROXY_LOG)]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("FAILED: ") and "CHECK for 'global_batch_size'" in err
    other_gbs = ["--recipe", "mlperf_proxy_1gpu", "train.global_batch_size=16"]
    assert main(["mlperf-check", str(PROXY_LOG), *other_gbs]) == 1  # the proxy rules pin the recipe's GBS
