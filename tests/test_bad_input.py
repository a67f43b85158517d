"""Bad input never reaches a GPU node: every input below is refused, naming its field, on every door.

The doors: ``dsv3 plan`` and ``dsv3 pretrain --dryrun`` (exit 2, one line ``dsv3: error: FIELD: ...``),
a notebook's ``run.run(task, executor=executors.local(...), dryrun=True)`` after attribute edits of
``task.recipe`` (RecipeError naming the field), and the train entry ``pretrain(recipe)`` given a built
recipe edited the same way (RecipeError before any GPU work). tests/README.md states how many inputs
the table holds; ``test_readme_counts_the_table`` keeps that number true.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nemo_run as run
import pytest

from dsv3_recipes import recipes
from dsv3_recipes.cli import main
from dsv3_recipes.launch import executors
from dsv3_recipes.launch.submit import recipe_of
from dsv3_recipes.recipe.schema import RecipeError
from dsv3_recipes.train.entry import pretrain

NAN = float("nan")
# (recipe, {field: value} as a notebook would set it, CLI overrides if they differ, the field named)
BAD_INPUTS = [
    # Issue 16, as a new user tried them.
    ("proxy_1gpu", {"model.expert_model_parallel_size": 3}, None, "model.expert_model_parallel_size"),
    ("proxy_1gpu", {"train.global_batch_size": "abc"}, None, "train.global_batch_size"),
    ("gb200_mxfp8_256gpu", {"model.num_layers": 0}, None, "model.num_layers"),
    ("gb200_mxfp8_256gpu", {"model.num_layers": -8}, None, "model.num_layers"),
    ("gb200_mxfp8_256gpu", {"model.num_layers": 10**21}, None, "model.num_layers"),
    ("gb200_mxfp8_256gpu", {"model.hidden_size": 0}, None, "model.hidden_size"),
    ("gb200_mxfp8_256gpu", {"model.first_k_dense_replace": 100}, None, "model.first_k_dense_replace"),
    ("gb200_mxfp8_256gpu", {"model.moe_router_topk": 0}, None, "model.moe_router_topk"),
    ("gb200_mxfp8_256gpu", {"optimizer.lr": -1.0}, ["optimizer.lr=-1"], "optimizer.lr"),
    ("gb200_mxfp8_256gpu", {"optimizer.lr": NAN}, ["optimizer.lr=nan"], "optimizer.lr"),
    ("proxy_1gpu", {"train.train_iters": -5}, None, "train.train_iters"),
    ("gb200_mxfp8_256gpu", {"logger.log_interval": 0}, None, "logger.log_interval"),
    ("gb200_mxfp8_256gpu", {"train.global_batch_size": 8e21}, None, "train.global_batch_size"),
    ("gb200_mxfp8_256gpu", {"train.global_batch_size": 8 * 10**21}, None, "train.global_batch_size"),
    ("gb200_mxfp8_256gpu", {"model.seq_length": 0}, None, "model.seq_length"),
    (
        "proxy_1gpu",
        {"dataset.mock": True, "dataset.data_paths": ["/lustre/c4_text_document"]},
        ["dataset.mock=True", "dataset.data_paths=['/lustre/c4_text_document']"],
        "dataset.data_paths",
    ),
    ("mlperf_h100_1024gpu", {"train.global_batch_size": 8192}, None, "train.global_batch_size"),
    ("mlperf_gb300_256gpu", {"optimizer.lr": 0.00003}, None, "optimizer.lr"),
    ("mlperf_gb300_256gpu", {"mlperf.proxy": True}, None, "mlperf.proxy"),
    ("mlperf_gb300_256gpu", {"scheduler.lr_decay_iters": 12000}, None, "scheduler.lr_decay_iters"),
    ("gb200_mxfp8_256gpu", {"train.train_iters": 10}, None, "train.train_iters"),
    # Added: sizes, ranges and rules between fields.
    ("proxy_1gpu", {"train.micro_batch_size": 0}, None, "train.micro_batch_size"),
    ("proxy_1gpu_stock", {"train.micro_batch_size": 16}, None, "train.micro_batch_size"),
    ("proxy_1gpu", {"launch.num_nodes": 0}, None, "launch.num_nodes"),
    ("proxy_1gpu", {"model.tensor_model_parallel_size": 0}, None, "model.tensor_model_parallel_size"),
    ("proxy_1gpu", {"model.vocab_size": 0}, None, "model.vocab_size"),
    ("proxy_1gpu", {"model.moe_router_group_topk": 9}, None, "model.moe_router_group_topk"),
    ("proxy_1gpu", {"model.attention_dropout": 2.0}, None, "model.attention_dropout"),
    ("proxy_1gpu", {"model.mtp_num_layers": -1}, None, "model.mtp_num_layers"),
    ("gb200_mxfp8_256gpu", {"model.num_layers": 2**31 - 1}, None, "model.num_layers"),
    ("proxy_1gpu", {"optimizer.adam_beta1": 1.5}, None, "optimizer.adam_beta1"),
    ("proxy_1gpu", {"optimizer.min_lr": 1.0}, None, "optimizer.min_lr"),
    ("proxy_1gpu", {"optimizer.lr": None}, ["optimizer.lr=None"], "optimizer.lr"),
    ("proxy_1gpu", {"train.eval_iters": -1}, None, "train.eval_iters"),
    ("proxy_1gpu", {"train.seed": -1}, None, "train.seed"),
    ("proxy_1gpu", {"checkpoint.save_interval": 0}, None, "checkpoint.save_interval"),
    ("proxy_1gpu", {"profiling.profile_step_end": 5}, None, "profiling.profile_step_end"),
    ("proxy_1gpu", {"env_vars": {"BAD NAME": "1"}}, ["env_vars={'BAD NAME': '1'}"], "env_vars.BAD NAME"),
    (
        "proxy_1gpu",
        {"dataset.data_paths": ["0.5", "/d/a_text_document", "/d/b_text_document"]},
        None,
        "dataset.data_paths",
    ),
    ("proxy_1gpu", {"dataset.split": "99,1"}, ["dataset.split='99,1'"], "dataset.split"),
    ("proxy_1gpu", {"scheduler.lr_decay_samples": 1000}, None, "scheduler.lr_decay_samples"),
    (
        "proxy_1gpu",
        dict.fromkeys(
            ("scheduler.override_opt_param_scheduler", "scheduler.use_checkpoint_opt_param_scheduler"), True
        ),
        None,
        "scheduler.override_opt_param_scheduler",
    ),
    ("h100_bf16_512gpu", {"logger.log_rank": 0}, None, "logger.log_rank"),
    ("mlperf_gb300_256gpu", {"mlperf.eval_set": "random"}, None, "mlperf.eval_set"),
    ("proxy_1gpu", {"mixed_precision.fp8_recipe": "mxfp8"}, None, "mixed_precision.fp8_recipe"),
]
IDS = [f"{i:02d}-{field}" for i, (_, _, _, field) in enumerate(BAD_INPUTS)]


def cli_overrides(changes: dict, overrides: list[str] | None) -> list[str]:
    return overrides if overrides is not None else [f"{k}={v!r}" for k, v in changes.items()]


def assign(root, changes: dict) -> None:
    for dotted, value in changes.items():
        *parents, name = dotted.split(".")
        target = root
        for part in parents:
            target = getattr(target, part)
        setattr(target, name, value)


def refused_by_cli(argv: list[str], field: str, capsys) -> None:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"dsv3: error: {field}: "), err


@pytest.mark.parametrize(("name", "changes", "overrides", "field"), BAD_INPUTS, ids=IDS)
def test_cli_plan_refuses(name, changes, overrides, field, capsys):
    refused_by_cli(["plan", name, *cli_overrides(changes, overrides)], field, capsys)


@pytest.mark.parametrize(("name", "changes", "overrides", "field"), BAD_INPUTS, ids=IDS)
def test_cli_pretrain_dryrun_refuses(name, changes, overrides, field, capsys):
    refused_by_cli(["pretrain", "-f", name, "--dryrun", *cli_overrides(changes, overrides)], field, capsys)


@pytest.mark.parametrize(("name", "changes", "overrides", "field"), BAD_INPUTS, ids=IDS)
def test_notebook_run_run_dryrun_refuses(name, changes, overrides, field):
    task = recipes.get(name)
    assign(task.recipe, changes)
    if any(v != v for v in changes.values()):  # NaN != NaN: NeMo-Run's own serialization check refuses first
        with pytest.raises(RuntimeError, match=re.escape(f"'.recipe.{field}': nan")):
            run.run(task, executor=executors.local(gpus=1), dryrun=True)
        return
    with pytest.raises(RecipeError) as err:
        run.run(task, executor=executors.local(gpus=1), dryrun=True)
    assert err.value.path == field and "\n" not in str(err.value)


@pytest.mark.parametrize(("name", "changes", "overrides", "field"), BAD_INPUTS, ids=IDS)
def test_train_entry_refuses_an_edited_recipe(name, changes, overrides, field, capsys):
    recipe = recipe_of(recipes.get(name))
    assign(recipe, changes)
    with pytest.raises(SystemExit) as stop:
        pretrain(recipe)  # fails in validate(), before the Megatron-Bridge imports
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and err[0].startswith(f"dsv3: error: {field}: ")


def test_readme_counts_the_table():
    readme = (Path(__file__).parent / "README.md").read_text()
    (count,) = re.findall(r"(\d+) bad inputs", readme)
    assert int(count) == len(BAD_INPUTS)


# --- derived values are derived -----------------------------------------------------------------------


def test_data_paths_imply_indexed_data():
    recipe = recipe_of(recipes.get("proxy_1gpu"))
    assert recipe.dataset.mock  # no paths: mock tokens
    task = recipes.get("proxy_1gpu")
    task.recipe.dataset.data_paths = ["/lustre/c4_text_document"]
    assert recipe_of(task).dataset.mock is False


def test_env_vars_override_merges_and_none_removes(capsys):
    change = "env_vars={'NCCL_DEBUG': 'INFO', 'NVTE_FUSED_ATTN': None}"
    assert main(["show", "gb200_mxfp8_256gpu", "--json", change]) == 0
    env = json.loads(capsys.readouterr().out)["env_vars"]
    assert env["NCCL_DEBUG"] == "INFO" and "NVTE_FUSED_ATTN" not in env
    assert env["NVLINK_DOMAIN_SIZE"] == "72" and len(env) == 12  # the recipe's other 11 stay


def test_one_env_var_is_set_by_its_dotted_name_as_text(capsys):
    assert (
        main(["show", "gb200_mxfp8_256gpu", "--json", "env_vars.NCCL_DEBUG=INFO", "env_vars.NEW_ONE=32"]) == 0
    )
    env = json.loads(capsys.readouterr().out)["env_vars"]
    assert (env["NCCL_DEBUG"], env["NEW_ONE"], env["NVLINK_DOMAIN_SIZE"]) == ("INFO", "32", "72")
    assert main(["show", "proxy_1gpu", "env_vars.BAD-NAME=1"]) == 2
    assert "env_vars.BAD-NAME: is not a shell variable name" in capsys.readouterr().err


def test_mlperf_learning_rate_follows_an_overridden_batch_size(capsys):
    assert main(["show", "mlperf_gb300_256gpu", "--json", "train.global_batch_size=18432"]) == 0
    out = capsys.readouterr().out
    assert '"lr": 2.5456e-05' in out


# --- refusals that need files: data, checkpoints, logs ---------------------------------------------------


def saved_run(directory: Path, train_iters: int, lr_decay_iters: int) -> Path:
    """A Megatron-Bridge checkpoint of proxy_1gpu at iteration 4, with the run_config.yaml Bridge saves."""
    (directory / "iter_0000004").mkdir(parents=True)
    (directory / "latest_checkpointed_iteration.txt").write_text("4")
    config = {
        "train": {"global_batch_size": 8, "train_iters": train_iters, "train_samples": None},
        "scheduler": {
            "lr_decay_iters": lr_decay_iters,
            "lr_warmup_iters": 1,
            "lr_decay_samples": None,
            "lr_warmup_samples": 0,
            "lr_decay_style": "cosine",
        },
        "optimizer": {"lr": 3e-4, "min_lr": 3e-5},
    }
    (directory / "iter_0000004" / "run_config.yaml").write_text(json.dumps(config))  # JSON is YAML
    return directory


def test_resume_with_a_longer_run_is_refused_until_the_scheduler_is_told(tmp_path, capsys):
    """Issue 16's run: 4 steps saved, resumed with train_iters=8 (Megatron: "class input value 64 and
    checkpointvalue 32 for total number of weight decay iterations do not match")."""
    ckpt = saved_run(tmp_path / "ckpt", train_iters=4, lr_decay_iters=8)
    schedule = {"scheduler.lr_warmup_iters": 1, "scheduler.lr_decay_iters": 8}
    load = f"checkpoint.load='{ckpt}'"
    base = ["pretrain", "-f", "proxy_1gpu", "--dryrun", *cli_overrides(schedule, None), load]
    refused_by_cli([*base, "train.train_iters=8"], "train.train_iters", capsys)
    task = recipes.get("proxy_1gpu")
    assign(task.recipe, {"train.train_iters": 8, **schedule})
    task.recipe.checkpoint.load = str(ckpt)
    with pytest.raises(RecipeError, match=r"^train.train_iters: .* = 64, the checkpoint saved 32") as err:
        run.run(task, executor=executors.local(gpus=1), dryrun=True)
    assert "scheduler.override_opt_param_scheduler=True" in str(err.value)
    with pytest.raises(SystemExit):
        pretrain(recipe_of(task))  # the train entry checks the checkpoint too, in one line
    assert capsys.readouterr().err.startswith("dsv3: error: train.train_iters: ")
    assert main([*base, "train.train_iters=8", "scheduler.override_opt_param_scheduler=True"]) == 0
    assert main([*base, "train.train_iters=4"]) == 0  # the saved schedule: nothing to refuse


def test_truncated_index_names_its_file(tmp_path, capsys):
    from test_mlperf_launch import write_idx

    prefix = tmp_path / "c4_text_document"
    write_idx(f"{prefix}.idx", [4096] * 10)
    (tmp_path / "c4_text_document.bin").touch()
    data = f"dataset.data_paths=['{prefix}']"
    assert main(["pretrain", "-f", "proxy_1gpu", "--dryrun", data]) == 0
    capsys.readouterr()  # NeMo-Run's banners of that dry run went to stderr
    with open(f"{prefix}.idx", "r+b") as f:
        f.truncate(40)  # the header and a few of its ten lengths
    refused_by_cli(["pretrain", "-f", "proxy_1gpu", "--dryrun", data], "dataset.data_paths", capsys)
    main(["pretrain", "-f", "proxy_1gpu", "--dryrun", data])
    assert f"{prefix}.idx is truncated" in capsys.readouterr().err


@pytest.mark.parametrize("content", [None, "DSV3_METRICS {not json", 'DSV3_METRICS {"lm_loss": 2.0}'])
def test_report_on_an_empty_or_unparseable_dir_is_one_line(tmp_path, capsys, content):
    if content is not None:
        (tmp_path / "train.log").write_text(f"start\n{content}\n")
    assert main(["report", str(tmp_path), "--no-plot"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("dsv3: error: ")
    if content is not None:
        assert f"{tmp_path / 'train.log'}:2: unreadable metrics line" in err
