"""MLPerf logging through the Megatron-Bridge callback: a training run faked on CPU (Bridge's event
order, a one-rank gloo process group for the loss broadcast) writes an mllog file; mlperf-logging's own
compliance checker (training 6.1.0) judges it, and the callback ends training at the target."""

import json
import subprocess
import sys
import types

import pytest

pytest.importorskip("megatron.bridge", reason="needs the train extra")

import torch  # noqa: E402
from megatron.bridge.training.callbacks import CallbackContext  # noqa: E402

from dsv3_recipes.launch.submit import recipe_of  # noqa: E402
from dsv3_recipes.mlperf import rules as mlperf_rules  # noqa: E402
from dsv3_recipes.mlperf.compliance import ProxyScale, check_log  # noqa: E402
from dsv3_recipes.recipes.mlperf import mlperf_gb300_256gpu, mlperf_proxy_1gpu  # noqa: E402
from dsv3_recipes.train.mlperf_log import MLPerfCallback  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def process_group(tmp_path_factory):
    store = tmp_path_factory.mktemp("pg") / "store"
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


def benchmark_recipe(tmp_path, gbs=15360):
    task = mlperf_gb300_256gpu()
    task.recipe.train.global_batch_size = gbs
    task.recipe.optimizer.lr = mlperf_rules.base_learning_rate(gbs)
    task.recipe.mlperf.log_file = str(tmp_path / "mlperf_log.txt")
    task.recipe.mlperf.submission_org = "ACME"
    return recipe_of(task)


def train(recipe, loss_at):
    """Drive the callback in Megatron-Bridge 0.6.2's order (pretrain -> setup -> train loop)."""
    callback = MLPerfCallback(recipe, cache_cleared=False)
    state = types.SimpleNamespace(
        train_state=types.SimpleNamespace(step=0, do_valid=True, do_test=True),
        cfg=types.SimpleNamespace(train=types.SimpleNamespace(train_iters=recipe.train.train_iters)),
    )

    def context(**fields):
        return CallbackContext(state=state, model=[], **fields)

    first_eval = mlperf_rules.start_eval_step(recipe)
    callback.on_data_init_start(context())
    callback.on_train_start(context())
    while state.train_state.step < state.cfg.train.train_iters:
        state.train_state.step += 1
        callback.on_train_step_end(context())
        if state.train_state.do_valid and state.train_state.step >= first_eval:
            callback.on_eval_start(context())
            loss = torch.tensor(loss_at(state.train_state.step))
            callback.on_eval_end(context(total_loss_dict={"lm loss": loss}))
    callback.on_train_end(context())
    return state


def events(path):
    with open(path) as f:
        return [json.loads(line.split(":::MLLOG ", 1)[1]) for line in f if ":::MLLOG" in line]


def package_checker(log, tmp_path):
    """mlperf-logging's command line, exactly as a submitter runs it."""
    command = [sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage", "training"]
    command += ["--ruleset", "6.1.0", "--log_output", str(tmp_path / "checker.log"), str(log)]
    return subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, check=False)


def test_benchmark_run_log_passes_the_package_checker_and_stops_at_the_target(tmp_path):
    recipe = benchmark_recipe(tmp_path)
    state = train(recipe, loss_at=lambda step: 3.6 + 0.05 * (47 - step))  # 3.80 at step 43, 3.60 at 47
    assert state.train_state.step == state.cfg.train.train_iters == 47  # Bridge's loop ends there
    assert not state.train_state.do_valid and not state.train_state.do_test

    result = package_checker(recipe.mlperf.log_file, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    log = events(recipe.mlperf.log_file)
    value = {e["key"]: e["value"] for e in log if e["event_type"] == "POINT_IN_TIME"}
    assert value["submission_benchmark"] == "deepseekv3_671b" and value["global_batch_size"] == 15360
    assert value["opt_base_learning_rate"] == 0.000023238
    assert value["gradient_accumulation_steps"] == 240  # mlperf-logging's RCP entry for GBS 15360
    accuracy = [e for e in log if e["key"] == "eval_accuracy"]
    assert [e["metadata"]["samples_count"] // 15360 for e in accuracy] == [43, 44, 45, 46, 47]
    (stop,) = [e for e in log if e["key"] == "run_stop"]
    assert stop["metadata"]["status"] == "success" and stop["metadata"]["samples_count"] == 47 * 15360


def test_run_that_misses_the_target_ends_aborted_and_fails_the_checker(tmp_path):
    recipe = benchmark_recipe(tmp_path)
    recipe.train.train_iters = 45
    state = train(recipe, loss_at=lambda step: 3.9)
    assert state.train_state.step == 45 and not state.train_state.do_valid  # no post-training eval
    (stop,) = [e for e in events(recipe.mlperf.log_file) if e["key"] == "run_stop"]
    assert stop["metadata"]["status"] == "aborted"
    result = package_checker(recipe.mlperf.log_file, tmp_path)
    assert result.returncode != 0 and "v['value'] <= 3.6" in result.stdout + result.stderr


def test_proxy_log_passes_with_only_the_scale_rules_replaced(tmp_path):
    task = mlperf_proxy_1gpu()
    task.recipe.mlperf.log_file = str(tmp_path / "proxy_log.txt")
    recipe = recipe_of(task)
    state = train(recipe, loss_at=lambda step: 10.0 - step)  # 6.0 at the first evaluation (step 4)
    assert state.train_state.step == 7  # 3.0 <= 3.6
    log = recipe.mlperf.log_file
    assert {e["key"]: e["value"] for e in events(log)}[mlperf_rules.PROXY_LOG_KEY] is True

    passed, messages = check_log(log, ProxyScale.of(recipe))
    assert passed, messages
    passed, messages = check_log(log)  # the package rules alone
    failed = sorted(m.split("'")[1] for m in messages if m.startswith("CHECK for"))
    assert not passed and failed == [
        "eval_accuracy",
        "eval_samples",
        "global_batch_size",
        "opt_base_learning_rate",
    ]
    benchmark = benchmark_recipe(tmp_path)
    assert not check_log(log, ProxyScale.of(benchmark))[0]  # other values than the log's: refused
