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
    # TE's one-launch grouped GEMM (the recipe's env var) raises with blockwise FP8 on Blackwell and
    # asserts on the device on Hopper.
    (
        "proxy_1gpu",
        {"launch.gpu_type": "b200", "mixed_precision.fp8_recipe": "blockwise"},
        None,
        "mixed_precision.fp8_recipe",
    ),
    ("proxy_1gpu", {"mixed_precision.fp8_recipe": "blockwise"}, None, "mixed_precision.fp8_recipe"),
    # The fused Adam + clip kernel is TE's param-remainder AdamW: bf16 moments only.
    (
        "proxy_1gpu",
        {"optimizer.fused_adam": True, "optimizer.exp_avg_sq_dtype": "fp32"},
        None,
        "optimizer.fused_adam",
    ),
    # The experts' counts stay on the GPU only where no dispatcher gathers them across ranks.
    (
        "proxy_1gpu",
        {"model.moe_counts_on_device": True, "model.moe_token_dispatcher_type": "alltoall"},
        None,
        "model.moe_counts_on_device",
    ),
    (
        "proxy_1gpu",
        {"model.moe_counts_on_device": True, "env_vars": {"NVTE_GROUPED_LINEAR_USE_FUSED_GROUPED_GEMM": "0"}},
        ["model.moe_counts_on_device=True", "env_vars={'NVTE_GROUPED_LINEAR_USE_FUSED_GROUPED_GEMM': '0'}"],
        "model.moe_counts_on_device",
    ),
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


def test_secret_names_are_matched_in_any_case_and_not_beyond():
    from dsv3_recipes.launch.safe import is_secret

    secrets = [*SECRETS, "HF_TOKEN", "NGC_API_KEY", "aws_session_token", "SSH_KEY", "MY_CREDENTIALS"]
    assert all(map(is_secret, secrets))
    assert not any(map(is_secret, ("TOKENIZERS_PARALLELISM", "NCCL_IB_PKEY", "NCCL_DEBUG", "MONKEY_PATCH")))


def test_readme_counts_the_table():
    readme = (Path(__file__).parent / "README.md").read_text()
    counts = {
        "bad inputs": len(BAD_INPUTS),
        "bad launch inputs": len(LAUNCH_INPUTS),
        "bad executor arguments": len(EXECUTOR_INPUTS),
        "bad environments": len(MLPERF_SCRIPT_INPUTS),
    }
    for what, count in counts.items():
        assert re.findall(rf"(\d+) {what}", readme) == [str(count)], what


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


# --- what a launch is given: Slurm options, env, paths, outputs, files (issue 27) -------------------------

# Every value that would run as shell, land unquoted in the script or leave its directory; {tmp}/m is the
# marker that exists afterwards only if something ran.
HOSTILE = ("x;touch {tmp}/m;", "x$(touch {tmp}/m)", "x`touch {tmp}/m`", "x\ntouch {tmp}/m", "x --privileged")
SLURM = ["pretrain", "-f", "proxy_1gpu", "-e", "slurm", "--account", "A", "--dryrun"]
LOCAL = ["pretrain", "-f", "proxy_1gpu", "--dryrun"]
SECRETS = ("hf_token", "wandb_api_key", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD", "My_Token", "gh_pat")
# (argv, environment, the field or option the one-line refusal names)
LAUNCH_INPUTS = [
    *((SLURM + [f"name={v}"], {}, "name") for v in HOSTILE),
    *((SLURM + [f"name={v}"], {}, "name") for v in ("../../../tmp/victim", "a/b", "..", "''", "-x", "a..b")),
    *((LOCAL + ["name=../../{tmp}/victim"], {}, "name"),),
    *(
        (["pretrain", "-f", "proxy_1gpu", "-e", "slurm", "--account", v, "--dryrun"], {}, "--account")
        for v in HOSTILE
    ),
    (["pretrain", "-f", "proxy_1gpu", "-e", "slurm", "--account", "", "--dryrun"], {}, "--account"),
    *((SLURM + ["--partition", v], {}, "--partition") for v in (*HOSTILE, "a,,b")),
    *((SLURM + ["--time", v], {}, "--time") for v in (*HOSTILE, "abc", "-5", "0", "00:00:00", "1:2:3:4")),
    *((SLURM + ["--container-image", v], {}, "--container-image") for v in (*HOSTILE, "reg.io/x y")),
    *(
        (SLURM + ["--container-mounts", v], {}, "--container-mounts")
        for v in ("/a:/b:/c:/d", "relative:/x", "/a b:/a", "/a;touch {tmp}/m:/b", "/a:/b:rx")
    ),
    *((SLURM + ["--mpi", v], {}, "--mpi") for v in HOSTILE),
    *((SLURM + ["--bindpcie", v], {}, "--bindpcie") for v in (*HOSTILE, "/usr/bin/bind pcie")),
    *((SLURM + ["--gres-gpus-per-node", v], {}, "--gres-gpus-per-node") for v in ("0", "-1")),
    (SLURM, {"SBATCH_GPUS_PER_NODE": "abc"}, "SBATCH_GPUS_PER_NODE"),
    *(
        (SLURM, {"ADDITIONAL_SLURM_PARAMS": v}, field)
        for v, field in (
            ("comment=a\ntouch {tmp}/m", "ADDITIONAL_SLURM_PARAMS.comment"),
            ("bad key=1", "ADDITIONAL_SLURM_PARAMS"),
            ("a$(touch {tmp}/m)=1", "ADDITIONAL_SLURM_PARAMS"),
            ("x`id`", "ADDITIONAL_SLURM_PARAMS"),
        )
    ),
    *((SLURM + ["--job-dir", f"{{tmp}}/j{v}"], {}, "--job-dir") for v in (";touch {tmp}/m", " k", "$(id)")),
    *((SLURM + ["--ssh-host", v], {}, "--ssh-host") for v in HOSTILE),
    *((SLURM + ["--ssh-host", "login", "--ssh-user", v], {}, "--ssh-user") for v in HOSTILE[:3]),
    (LOCAL + ["--executor", "kubernetes"], {}, "--executor"),
    # Secrets by value: refused by name in any case, on a launch and on an export.
    *((LOCAL + [f"env_vars.{name}=s3cr3t"], {}, f"env_vars.{name}") for name in SECRETS),
    *(
        (["show", "proxy_1gpu", f"env_vars.{n}=s3cr3t", "--to-yaml", "-"], {}, f"env_vars.{n}")
        for n in SECRETS
    ),
    (SLURM + ["env_vars.NCCL_DEBUG=INFO\ntouch {tmp}/m"], {}, "env_vars.NCCL_DEBUG"),
    # Checkpoints: one to start from must exist; another run's is not written over.
    (LOCAL + ["checkpoint.load=/nonexistent"], {}, "checkpoint.load"),
    (LOCAL + ["checkpoint.load={tmp}/a_file"], {}, "checkpoint.load"),
    (LOCAL + ["checkpoint.pretrained_checkpoint=/nonexistent"], {}, "checkpoint.pretrained_checkpoint"),
    (LOCAL + ["checkpoint.save={tmp}/other_run"], {}, "checkpoint.save"),
    (SLURM + ["checkpoint.save={tmp}/other_run"], {}, "checkpoint.save"),
    (LOCAL + ["checkpoint.save={tmp}/other_run", "checkpoint.load=/nonexistent"], {}, "checkpoint.save"),
    # Mounted recipe paths: pyxis splits them at ':' and ','.
    *(
        (SLURM + [f"{field}={path!r}"], {}, field)
        for field, path in (
            ("checkpoint.save", "/lustre/a:b"),
            ("dataset.data_cache_path", "/lustre/a,b"),
            ("logger.tensorboard_dir", "/lustre/a b"),
            ("output_dir", "/lustre/a:b"),
            ("tokenizer.tokenizer_model", "/lustre/t,k"),
            ("mlperf.log_file", "/lustre/l\nx"),
        )
    ),
    (SLURM + ["dataset.data_paths=['/lustre/a:b_text_document']"], {}, "dataset.data_paths"),
    # Output files the command line names.
    (LOCAL + ["--dryrun-to", "{tmp}"], {}, "--dryrun-to"),
    (LOCAL + ["--dryrun-to", "{tmp}/no_such_dir/launch.sh"], {}, "--dryrun-to"),
    (["show", "proxy_1gpu", "--to-yaml", "{tmp}"], {}, "--to-yaml"),
    (["plan", "proxy_1gpu", "--to-yaml", "{tmp}/no_such_dir/task.yaml"], {}, "--to-yaml"),
    # preprocess: an existing dataset is not overwritten unasked; the prefix names the job.
    *(
        (["preprocess", "-i", "{tmp}/in.json", "--tokenizer", "{tmp}/tok", *args, "--dryrun"], {}, field)
        for args, field in (
            (["-o", "{tmp}/data/c4"], "--output-prefix"),
            (["-o", "{tmp}/data/c4", "-e", "slurm", "--account", "A"], "--output-prefix"),
            (["-o", "{tmp}/data/c4;touch {tmp}/m"], "--output-prefix"),
            (["-o", "{tmp}/data/"], "--output-prefix"),
            (["-o", "{tmp}/data/x", "--json-key", "a/b"], "--json-key"),
            (["-o", "{tmp}/data/x", "--workers", "0"], "--workers"),
        )
    ),
    # convert verify: thresholds that cannot fail (or cannot pass).
    *(
        (
            [
                "convert",
                "verify",
                "--hf-path",
                "{tmp}/hf",
                "--megatron-path",
                "{tmp}/mg",
                flag,
                v,
                "--dryrun",
            ],
            {},
            flag,
        )
        for flag, v in (
            ("--min-top1-agreement", "-5"),
            ("--min-top1-agreement", "0"),
            ("--min-top1-agreement", "1.5"),
            ("--min-top1-agreement", "nan"),
            ("--max-mean-rel-error", "inf"),
            ("--max-mean-rel-error", "nan"),
            ("--max-mean-rel-error", "0"),
            ("--max-mean-rel-error", "-1"),
        )
    ),
    # mlperf-check: a log the checker cannot read.
    *(
        (["mlperf-check", log], {}, "log")
        for log in ("{tmp}", "{tmp}/empty.log", "{tmp}/binary.log", "{tmp}/a_file")
    ),
]
LAUNCH_IDS = [f"{i:03d}-{field}" for i, (_, _, field) in enumerate(LAUNCH_INPUTS)]


@pytest.fixture
def world(tmp_path, monkeypatch):
    """Files a bad input must not change: another run's checkpoint, a dataset, logs; NeMo-Run's home
    (where job directories go) is apart, and the command runs in an empty working directory."""
    from nemo_run import config

    (tmp_path / "other_run").mkdir()
    (tmp_path / "other_run" / "latest_checkpointed_iteration.txt").write_text("100")
    (tmp_path / "data").mkdir()
    for ext in (".bin", ".idx"):
        (tmp_path / "data" / f"c4_text_document{ext}").write_bytes(b"data")
    (tmp_path / "a_file").write_text("a file")
    (tmp_path / "empty.log").touch()
    (tmp_path / "binary.log").write_bytes(b"\0\1\2:::MLLOG")
    (tmp_path / "in.json").write_text('{"text": "a"}\n')
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    home = tmp_path.parent / f"{tmp_path.name}_home"  # job directories: outside what is compared
    monkeypatch.setenv("NEMORUN_HOME", str(home))
    monkeypatch.setattr(config, "_NEMORUN_HOME", str(home))
    monkeypatch.setenv("DSV3_IMAGE_REGISTRY", "reg.example.com/team")
    for name in (
        "SBATCH_ACCOUNT",
        "SBATCH_PARTITION",
        "SBATCH_GPUS_PER_NODE",
        "RUN_CONF_IMAGE",
        "RUN_CONF_MOUNTS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("ADDITIONAL_SLURM_PARAMS", raising=False)
    return tmp_path


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize(("argv", "env", "field"), LAUNCH_INPUTS, ids=LAUNCH_IDS)
def test_a_bad_launch_input_is_one_line_and_changes_nothing(argv, env, field, world, monkeypatch, capsys):
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(tmp=world))
    before = snapshot(world)
    refused_by_cli([a.format(tmp=world) for a in argv], field, capsys)
    assert snapshot(world) == before  # nothing written, nothing run ({tmp}/m absent)


# A notebook's executors: the same rules, naming executor.<argument>. (factory, keyword arguments, field)
EXECUTOR_INPUTS = [
    ("slurm", {"account": ""}, "executor.account"),
    *(("slurm", {"account": v}, "executor.account") for v in HOSTILE),
    ("slurm", {"nodes": 0}, "executor.nodes"),
    ("slurm", {"nodes": -1}, "executor.nodes"),
    ("slurm", {"nodes": "2"}, "executor.nodes"),
    ("slurm", {"gpus_per_node": 0}, "executor.gpus_per_node"),
    ("slurm", {"segment": 0}, "executor.segment"),
    ("slurm", {"gres_gpus_per_node": 0}, "executor.gres_gpus_per_node"),
    ("slurm", {"gres_gpus_per_node": -1}, "executor.gres_gpus_per_node"),
    ("slurm", {"gres_gpus_per_node": 4}, "executor.gres_gpus_per_node"),  # fewer than the 8 ranks
    *(("slurm", {"time": v}, "executor.time") for v in ("-5", "abc", "0", "", "4:00:00\n#SBATCH --x")),
    *(("slurm", {"partition": v}, "executor.partition") for v in HOSTILE),
    *(("slurm", {"container_image": v}, "executor.container_image") for v in HOSTILE),
    *(
        ("slurm", {"container_mounts": [v]}, "executor.container_mounts")
        for v in ("/a:/b:/c:/d", "/a,/b", "a:/b")
    ),
    *(("slurm", {"mpi": v}, "executor.mpi") for v in ("pmix; touch {tmp}/m", "pmix\nx")),
    ("slurm", {"bindpcie": "bindpcie"}, "executor.bindpcie"),
    ("slurm", {"bindpcie": "/usr/bin/x;touch {tmp}/m"}, "executor.bindpcie"),
    ("slurm", {"ssh_host": "h;touch {tmp}/m"}, "executor.ssh_host"),
    ("slurm", {"ssh_host": "h", "ssh_user": "u x"}, "executor.ssh_user"),
    ("slurm", {"job_dir": "/j"}, "executor.job_dir"),  # only with ssh_host
    ("slurm", {"ssh_host": "h", "job_dir": "/j;touch {tmp}/m"}, "executor.job_dir"),
    ("slurm", {"secrets": ["HF TOKEN"]}, "executor.secrets"),
    ("slurm", {"additional_parameters": {"bad key": 1}}, "executor.additional_parameters"),
    ("slurm", {"additional_parameters": {"comment": "a\nb"}}, "executor.additional_parameters.comment"),
    ("slurm", {"env_vars": {"hf_token": "x"}}, "env_vars.hf_token"),
    ("slurm", {"env_vars": {"NCCL_DEBUG": "INFO\ntouch {tmp}/m"}}, "env_vars.NCCL_DEBUG"),
    ("slurm", {"env_vars": {"BAD NAME": "1"}}, "env_vars.BAD NAME"),
    ("slurm", {"env_vars": {"NCCL_DEBUG": 1}}, "env_vars.NCCL_DEBUG"),
    ("local", {"gpus": 0}, "executor.gpus"),
    ("local", {"gpus": -1}, "executor.gpus"),
    ("local", {"gpus": "2"}, "executor.gpus"),
    ("local", {"env_vars": {"Api_Key": "x"}}, "env_vars.Api_Key"),
    ("local", {"env_vars": {"SOME_PASSWORD": "x"}}, "env_vars.SOME_PASSWORD"),
]


@pytest.mark.parametrize(("factory", "kwargs", "field"), EXECUTOR_INPUTS, ids=[f[2] for f in EXECUTOR_INPUTS])
def test_a_bad_executor_argument_is_refused_naming_it(factory, kwargs, field, world):
    before = snapshot(world)
    kwargs = {k: v.format(tmp=world) if isinstance(v, str) else v for k, v in kwargs.items()}
    if factory == "slurm":
        kwargs = {"account": "acct"} | kwargs
    with pytest.raises(RecipeError) as err:
        getattr(executors, factory)(**kwargs)
    assert err.value.path == field and "\n" not in str(err.value), str(err.value)
    assert snapshot(world) == before


# The MLPerf launch script: its environment is checked before it creates LOG_DIR or CHECKPOINT_DIR.
MLPERF_SCRIPT_INPUTS = [
    ({"SAVE_CKPT_STEPS": "abc", "CHECKPOINT_DIR": "{tmp}/ckpt"}, "SAVE_CKPT_STEPS"),
    ({"SAVE_CKPT_STEPS": "5"}, "SAVE_CKPT_STEPS"),  # saves, but nowhere to save to
    ({"NNODES": "x"}, "NNODES"),
    ({"GBS": "-1"}, "GBS"),
    ({"RESUME": "yes"}, "RESUME"),
    ({"DETACH": "2"}, "DETACH"),
    ({"LOG_DIR": "logs"}, "LOG_DIR"),
    ({"CHECKPOINT_DIR": "{tmp}/a b"}, "CHECKPOINT_DIR"),
    ({"DATA_DIR": "{tmp}/d:x"}, "DATA_DIR"),
    ({"SEED": "$(touch {tmp}/m)"}, "SEED"),
]


@pytest.mark.parametrize(("env", "field"), MLPERF_SCRIPT_INPUTS, ids=[f[1] for f in MLPERF_SCRIPT_INPUTS])
def test_the_mlperf_script_checks_its_environment_before_creating_anything(env, field, world):
    import shlex
    import subprocess

    scripts = Path(__file__).resolve().parent.parent / "experiments" / "mlperf"
    values = {
        "ACCOUNT": "acct",
        "PARTITION": "batch",
        "LOG_DIR": f"{world}/logs",
        "IMAGE": "registry.example.com/team/dsv3-recipes:test",
        "DATA_DIR": f"{world}/data",
        "MODEL_CKPT": f"{world}/data/ckpt",
        "SUBMISSION_ORG": "ACME",
        "DRYRUN": "0",
        "DSV3": "false",  # never reached
    } | {k: v.format(tmp=world) for k, v in env.items()}
    exports = " ".join(shlex.quote(f"{k}={v}") for k, v in values.items())
    config = scripts / "config_GB300_64x4x256xtp1pp4cp1.sh"
    command = f"source {config} && export {exports} && bash {scripts / 'run_deepseek_v3_671b.sh'}"
    before = snapshot(world)
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=False)
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(err) == 1, out.stderr
    assert err[0].startswith(f"run_deepseek_v3_671b.sh: error: {field}: ")
    assert snapshot(world) == before and not (world / "logs").exists()


@pytest.mark.parametrize("field", ["checkpoint.load", "checkpoint.pretrained_checkpoint"])
def test_the_train_entry_refuses_a_checkpoint_the_node_does_not_see(field, capsys):
    """On Slurm the login node cannot tell; the node checks before the model is built, in one line."""
    recipe = recipe_of(recipes.get("proxy_1gpu"))
    assign(recipe, {field: "/nonexistent/ckpt"})
    with pytest.raises(SystemExit) as stop:
        pretrain(recipe)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and err == [
        f"dsv3: error: {field}: /nonexistent/ckpt is not a directory (it does not exist)"
    ]
