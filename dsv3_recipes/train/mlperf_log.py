"""MLPerf logging (mlperf-logging's mllog) from Megatron-Bridge callbacks, written by global rank 0.

``MLPerfLog`` is the benchmark's vocabulary: the submission and hyperparameter keys the training
ruleset requires, and the timed events with their ``samples_count`` (training sequences consumed).
``MLPerfCallback`` maps Bridge's training events onto it:

    process start          init_start, cache_clear, submission_*, hyperparameters
    on_data_init_start     init_checkpoint_step, init_stop, run_start (model and checkpoint are loaded)
    on_train_start         block_start
    on_eval_start          block_stop, eval_start
    on_eval_end            eval_accuracy, eval_stop; at the target run_stop(success) and the run ends,
                           else block_start
    on_train_end           block_stop, run_stop(aborted) when the target was never reached

Evaluation starts at the ruleset's step (``ValidationConfig.start_eval_at_iter``) and repeats every
step. The loss lives on the last pipeline stage; it is broadcast from the last rank so every rank
takes the same stop decision. The run ends by setting Bridge's ``train.train_iters`` to the current
step, which closes the training loop normally (final checkpoint, ``on_train_end``), and by clearing
``do_valid`` so Bridge's post-training evaluation does not run. A run that Slurm's time limit cuts
(``exit_duration_in_mins``) logs no run_stop: its log is one segment of a resumed run.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

import torch
from megatron.bridge.training.callbacks import Callback, CallbackContext
from mlperf_logging.mllog import constants as c
from mlperf_logging.mllog.mllog import MLLogger

from dsv3_recipes.mlperf import rules as mlperf_rules
from dsv3_recipes.recipe.resolve import resolve
from dsv3_recipes.recipe.schema import Recipe

if TYPE_CHECKING:
    from megatron.bridge.training.state import GlobalState

DECAY_SCHEDULE = "cosine with linear warmup"  # the ruleset's opt_learning_rate_decay_schedule


def launch_rank(variable: str, slurm_variable: str) -> int:
    """A rank before torch.distributed starts: torchrun's variable, else Slurm's."""
    return int(os.environ.get(variable, os.environ.get(slurm_variable, "0")))


def drop_page_cache() -> bool:
    """Drop the node's page cache (MLPerf's cache_clear) from its first rank; False where not allowed."""
    if launch_rank("LOCAL_RANK", "SLURM_LOCALID") != 0:
        return False
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
    except OSError:
        return False
    return True


def numerical_precisions(recipe: Recipe) -> dict[str, str]:
    """The lowest precision in linear layers, attention and communication (ruleset 6.1.0 names)."""
    mp = recipe.mixed_precision
    base = "bfloat16" if mp.bf16 else "fp32"
    return {
        c.LOWEST_NUMERICAL_PRECISION_IN_LINEAR: "fp8" if mp.fp8_recipe else base,
        c.LOWEST_NUMERICAL_PRECISION_IN_ATTN: base,  # TE attention runs in BF16 in every recipe
        c.LOWEST_NUMERICAL_PRECISION_IN_COMM: "fp8" if mp.fp8_param_gather else base,
    }


class MLPerfLog:
    """The mllog lines of one run, to ``path`` and stdout."""

    def __init__(self, recipe: Recipe, path: str):
        self.recipe = recipe
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        logger = logging.Logger("dsv3.mlperf", logging.INFO)  # unregistered: one per run
        for handler in (logging.FileHandler(path), logging.StreamHandler(sys.stdout)):
            logger.addHandler(handler)
        self.mllog = MLLogger(logger=logger)

    def samples(self, step: int) -> int:
        return step * self.recipe.train.global_batch_size

    def init_start(self, cache_cleared: bool) -> None:
        self.mllog.event(key=c.CACHE_CLEAR, value=cache_cleared)
        self.mllog.start(key=c.INIT_START)

    def hyperparameters(self) -> None:
        r = self.recipe
        m, t, o, s, ml = r.model, r.train, r.optimizer, r.scheduler, r.mlperf
        keys = {
            c.SUBMISSION_BENCHMARK: mlperf_rules.BENCHMARK,
            c.SUBMISSION_ORG: ml.submission_org,
            c.SUBMISSION_DIVISION: ml.submission_division,
            c.SUBMISSION_STATUS: c.ONPREM,
            c.SUBMISSION_PLATFORM: ml.submission_platform,
            c.CONFIG_FILENAME: ml.config_filename or r.name,
            c.SEED: t.seed,
            c.GLOBAL_BATCH_SIZE: t.global_batch_size,
            c.MICRO_BATCH_SIZE: t.micro_batch_size,
            c.GRADIENT_ACCUMULATION_STEPS: resolve(r).sizes.num_microbatches,
            c.MAX_SEQUENCE_LENGTH: m.seq_length,
            c.MAX_STEPS: t.train_iters,
            c.TRAIN_SAMPLES: t.train_iters * t.global_batch_size,
            c.EVAL_SAMPLES: ml.eval_samples,
            c.OPT_NAME: c.ADAMW,
            c.OPT_BASE_LR: o.lr,
            c.OPT_END_LR: o.min_lr,
            c.OPT_LR_WARMUP_STEPS: s.lr_warmup_iters,
            c.OPT_LR_DECAY_STEPS: s.lr_decay_iters,  # Megatron's decay end, warmup included: 11996
            c.OPT_LR_DECAY_SCHEDULE: DECAY_SCHEDULE,
            c.OPT_ADAMW_BETA_1: o.adam_beta1,
            c.OPT_ADAMW_BETA_2: o.adam_beta2,
            c.OPT_ADAMW_EPSILON: o.adam_eps,
            c.OPT_ADAMW_WEIGHT_DECAY: o.weight_decay,
            c.OPT_GRADIENT_CLIP_NORM: o.clip_grad,
            c.MOE_AUX_LOSS_COEFF: m.moe_aux_loss_coeff,
            "target_accuracy": ml.target_log_ppl,
            c.TENSOR_PARALLELISM: m.tensor_model_parallel_size,
            c.PIPELINE_PARALLELISM: m.pipeline_model_parallel_size,
            c.CONTEXT_PARALLELISM: m.context_parallel_size,
            c.EXPERT_PARALLELISM: m.expert_model_parallel_size,
            **numerical_precisions(r),
        }
        if ml.proxy:
            keys[mlperf_rules.PROXY_LOG_KEY] = True
        for key, value in keys.items():
            self.mllog.event(key=key, value=value)

    def run_start(self, step: int) -> None:
        self.mllog.event(key=c.INIT_CHECKPOINT_STEP, value=step)
        self.mllog.end(key=c.INIT_STOP)
        self.mllog.start(key=c.RUN_START)

    def _interval(self, start: bool, key: str, step: int) -> None:
        log = self.mllog.start if start else self.mllog.end
        log(key=key, metadata={c.SAMPLES_COUNT: self.samples(step), "step": step})

    def block_start(self, step: int) -> None:
        self._interval(True, c.BLOCK_START, step)

    def block_stop(self, step: int) -> None:
        self._interval(False, c.BLOCK_STOP, step)

    def eval_start(self, step: int) -> None:
        self._interval(True, c.EVAL_START, step)

    def eval_result(self, step: int, loss: float) -> None:
        self.mllog.event(key=c.EVAL_ACCURACY, value=loss, metadata={c.SAMPLES_COUNT: self.samples(step)})
        self._interval(False, c.EVAL_STOP, step)

    def run_stop(self, step: int, status: str) -> None:
        self.mllog.end(key=c.RUN_STOP, metadata={c.SAMPLES_COUNT: self.samples(step), c.STATUS: status})


class MLPerfCallback(Callback):
    """Emits the MLPerf events on global rank 0 and ends the run at the target validation loss.

    Constructed when the process starts: that is MLPerf's init_start.
    """

    def __init__(self, recipe: Recipe, cache_cleared: bool):
        self.target = recipe.mlperf.target_log_ppl
        self.stopped = False
        self.log: MLPerfLog | None = None
        if launch_rank("RANK", "SLURM_PROCID") == 0:
            path = recipe.mlperf.log_file or os.path.join(recipe.output_dir, "mlperf_log.txt")
            self.log = MLPerfLog(recipe, path)
            self.log.init_start(cache_cleared)
            self.log.hyperparameters()

    def on_data_init_start(self, context: CallbackContext) -> None:
        if self.log:
            self.log.run_start(context.state.train_state.step)

    def on_train_start(self, context: CallbackContext) -> None:
        if self.log:
            self.log.block_start(context.state.train_state.step)

    def on_eval_start(self, context: CallbackContext) -> None:
        if self.log:
            step = context.state.train_state.step
            self.log.block_stop(step)
            self.log.eval_start(step)

    def on_eval_end(self, context: CallbackContext) -> None:
        state = context.state
        step = state.train_state.step
        loss = validation_loss(context.total_loss_dict)
        reached = loss <= self.target
        if self.log:
            self.log.eval_result(step, loss)
            if reached:
                self.log.run_stop(step, c.SUCCESS)
            else:
                self.log.block_start(step)
        if reached:
            state.cfg.train.train_iters = step  # Bridge's loop ends after this step
            self._end(state)

    def on_train_end(self, context: CallbackContext) -> None:
        if self.stopped:
            return
        if self.log:
            step = context.state.train_state.step
            self.log.block_stop(step)
            self.log.run_stop(step, c.ABORTED)
        self._end(context.state)

    def _end(self, state: GlobalState) -> None:
        """No post-training evaluation or test after run_stop."""
        state.train_state.do_valid = False
        state.train_state.do_test = False
        self.stopped = True


def validation_loss(total_loss_dict: dict[str, torch.Tensor] | None) -> float:
    """The evaluation's LM loss, which only last-stage ranks hold, broadcast from the last rank."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loss = (total_loss_dict or {}).get("lm loss")
    value = torch.zeros(1, device=device) if loss is None else loss.detach().float().reshape(1).to(device)
    torch.distributed.broadcast(value, src=torch.distributed.get_world_size() - 1)
    return value.item()
