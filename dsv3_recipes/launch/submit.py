"""Launch side: recipe + overrides -> checked task -> executor -> run (or a rendered dry run).

Every check here runs on the login node before anything is submitted: a bad override, an impossible
layout, a missing dataset or an absent GPU fails in seconds with the field it concerns. ``run_task``
is the one way pretrain, preprocess and convert submit: a dry run prints exactly the launch on stdout
(NeMo-Run's banners go to stderr), ``--detach`` returns after submission, and a job that does not
succeed is a failed command that shows the job's state and the tail of its log. A submission sbatch
refuses, or an SSH host that cannot be reached, is one line (exit 2); a first Ctrl-C or SIGTERM while
attached cancels the job and says so.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import glob
import io
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence

import nemo_run as run

from dsv3_recipes import recipes
from dsv3_recipes.launch import executors, local_gpus, safe
from dsv3_recipes.launch.nemo_run_internals import dryrun_request, experiment_dir, experiment_id
from dsv3_recipes.launch.options import EXECUTORS, JobFailed, LaunchOptions, SlurmOptions, SubmitRefused
from dsv3_recipes.mlperf import rules as mlperf_rules
from dsv3_recipes.plan import validate
from dsv3_recipes.recipe.rules import Capabilities, importable
from dsv3_recipes.recipe.schema import Recipe, RecipeError, blend_prefixes
from dsv3_recipes.recipes import overrides
from dsv3_recipes.recipes.task import as_task, checked

__all__ = ["EXECUTORS", "JobFailed", "LaunchOptions", "SlurmOptions", "build_task", "launch", "run_task"]
LOG_TAIL_LINES = 20


def build_task(
    name: str,
    overrides: Sequence[str] = (),
    shrink_gpus: int | None = None,
    capabilities: Capabilities | None = None,
) -> run.Partial:
    """The NeMo-Run task of ``recipes.configured``: the named recipe with ``key=value`` overrides
    (``recipes.overrides``), shrunk to ``shrink_gpus`` GPUs if given."""
    return as_task(recipes.configured(name, overrides, shrink_gpus, capabilities))


def recipe_task(
    name: str, overrides: Sequence[str] = (), shrink_gpus: int | None = None, executor: str = "local"
) -> run.Partial:
    """``build_task`` for a launch on ``executor``: a cluster job is shrunk to what the project's image
    runs, not to what this login node has."""
    capabilities = None
    if shrink_gpus is not None and executor != "local":
        capabilities = Capabilities.image(recipes.configured(name, overrides).recipe.launch.gpu_type)
    return build_task(name, overrides, shrink_gpus, capabilities)


def recipe_of(task: run.Partial) -> Recipe:
    """Build the recipe dataclass and validate it (``validate.build``)."""
    return validate.build(task.recipe)


def resolved_task(task: run.Partial) -> run.Partial:
    """The task with every recipe field set explicitly. NeMo-Run's YAML holds only a config's set
    arguments and its loader fills the rest from the type's default factory (here ``proxy_1gpu``), so
    only a config with every field set loads back as the same recipe."""
    resolved = copy.copy(task)  # not task.clone(): that runs the launch checks, and export needs none
    resolved.recipe = _as_config(recipe_of(task))
    return resolved


def _as_config(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _as_config(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return run.Config(type(value), **fields)
    if isinstance(value, list):
        return [_as_config(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_config(v) for k, v in value.items()}
    return value


def to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


def make_executor(kind: str, recipe: Recipe, slurm: SlurmOptions | None) -> run.Executor:
    if kind != "slurm":
        return executors.for_recipe(kind, recipe)
    from dsv3_recipes.recipe.images import image_for

    slurm = slurm or SlurmOptions()
    return executors.for_recipe("slurm", recipe, **slurm.executor_kwargs(image_for(recipe.launch.gpu_type)))


def preflight(
    recipe: Recipe, executor: str, dryrun: bool, overwrite: bool = False, on_login_node: bool = False
) -> None:
    """Refuse, before submission, anything that would fail once the job starts.

    ``on_login_node``: a Slurm job submitted from this machine (no ``--ssh-host``), which sees the
    cluster's file systems, so its data is checked here too, before it waits in the queue only to fail
    on the node (or in pyxis, mounting a path that is not there). A dry run checks no cluster path: it
    may be rendered anywhere, and the train-side preflight checks them on the node."""
    from dsv3_recipes.plan.preflight import check_launch
    from dsv3_recipes.recipe.checkpoints import check_exists

    check_launch(recipe, overwrite)
    if executor == "local":
        _check_local_data(recipe)
        check_exists(recipe)  # on Slurm the train-side preflight checks them on the node
        if not dryrun:
            field = "shrink" if recipe.shrink else "launch.gpus_per_node"
            check_local_machine(recipe.launch.num_gpus, f"recipe {recipe.name}", field)
    elif on_login_node and not dryrun:
        _check_local_data(recipe)


def _check_local_data(recipe: Recipe) -> None:
    d = recipe.dataset
    if d.mock:
        return
    for section in ("data_paths", "validation_paths"):
        for prefix in blend_prefixes(getattr(d, section), f"dataset.{section}"):
            missing = [ext for ext in (".bin", ".idx") if not os.path.isfile(prefix + ext)]
            if missing:
                raise RecipeError(f"dataset.{section}", f"{prefix}{missing[0]} does not exist")
            mlperf_rules.idx_token_count(prefix + ".idx", f"dataset.{section}")  # a readable index


def check_local_machine(gpus: int, what: str, field: str) -> None:
    """Refuse a local run this machine cannot hold: fewer GPUs than ``what`` needs, or no train side."""
    found = local_gpus.count()
    if found < gpus:
        raise RecipeError(
            field,
            f"{what} needs {gpus} GPU(s), this machine has {found}; "
            "use --dryrun to render the launch, or --executor slurm",
        )
    if not importable("megatron.bridge"):
        raise RecipeError(
            "executor",
            "the train side is not installed here: `uv sync --extra train`, or run in the container",
        )


def launch(task: run.Partial, options: LaunchOptions) -> None:
    """Check a recipe task (``preflight`` validates it, once), then run, submit or dry-run it on the
    executor the options name."""
    recipe = validate.built(task.recipe)
    if options.executor == "slurm" and options.slurm.resumes:
        task = resumable(task, recipe)
        recipe = validate.built(task.recipe)
    preflight(recipe, options.executor, options.dryrun, options.overwrite, not options.slurm.ssh_host)
    executor = make_executor(options.executor, recipe, options.slurm)
    run_task(checked(task), executor, recipe.name, options)


def resumable(task: run.Partial, recipe: Recipe) -> run.Partial:
    """A job that Slurm may start again (``--requeue``, ``--max-restarts``) resumes where it stopped:
    ``checkpoint.load`` is the directory it saves into, where Megatron resumes from the latest iteration
    (the first start finds none there and starts fresh), as a relaunch does (report/fault_resume.py)."""
    c = recipe.checkpoint
    if c.save_interval is None:
        raise RecipeError(
            "checkpoint.save_interval",
            "unset while the job may start again (--requeue, --max-restarts): each start would begin "
            "at step 0; set a save interval",
        )
    save = c.save or os.path.join(recipe.output_dir, "checkpoints")  # where train.container saves
    if c.load is not None and os.path.normpath(c.load) != os.path.normpath(save):
        raise RecipeError(
            "checkpoint.load",
            f"{c.load} is not the directory the job saves into ({save}): a requeued or restarted job "
            "would resume from it again; start from other weights with checkpoint.pretrained_checkpoint",
        )
    resumed = copy.deepcopy(task)
    overrides.apply(resumed.recipe, [f"checkpoint.load={save}"])
    return resumed


def run_task(task: run.Partial, executor: run.Executor, name: str, options: LaunchOptions) -> None:
    """Dry-run, submit (``--detach``) or run and wait; a job that does not succeed raises JobFailed."""
    if options.detach and not isinstance(executor, run.SlurmExecutor):
        raise RecipeError(
            "--detach", "only a Slurm job runs detached: a local run lasts as long as this command"
        )
    if options.dryrun_to:
        check_writable("--dryrun-to", options.dryrun_to)
    safe.name("name", name)  # the experiment's and its job directory's name
    if isinstance(executor, run.SlurmExecutor) and executor.array and not (options.detach or options.dryrun):
        raise RecipeError(
            "--array",
            "an array's tasks are followed with --detach (sacct -j JOBID); NeMo-Run follows one job",
        )
    with _job_home(options.slurm if isinstance(executor, run.SlurmExecutor) else None):
        if isinstance(executor, run.SlurmExecutor):
            from nemo_run import config

            safe.path("NEMORUN_HOME", config.get_nemorun_home())  # NeMo-Run's mkdir of it is not quoted
        if options.dryrun:
            if options.dryrun_to:
                script, kept = _render(task, executor, name, keep=True)
                write_text("--dryrun-to", options.dryrun_to, script + "\n")
                print(
                    f"{name}: wrote the launch to {options.dryrun_to}; the job's files it runs are kept "
                    f"in {kept}",
                    file=sys.stderr,
                )
            else:
                print(render_launch(task, executor, name))
            return
        if isinstance(executor, run.SlurmExecutor) and not _confirmed(executor, name, options):
            raise RecipeError("--yes", "not submitted: the submission was not confirmed")
        # NeMo-Run's progress, banners and the job's streamed log go to stderr, once it is submitted.
        console, interrupt = _HeldConsole(), _CancelOnInterrupt(name)
        slurm = isinstance(executor, run.SlurmExecutor)
        try:
            with (
                contextlib.redirect_stdout(console),
                _submission_errors(executor, name, lambda: console.submitted()),
                interrupt if slurm and not options.detach else contextlib.nullcontext(),
                run.Experiment(name, executor=executor) as exp,  # whose exit waits for the job
            ):
                named = _named(executor, name, experiment_id(exp))
                exp.add(task, executor=named, name=name, tail_logs=True)
                console.submitted = interrupt.submitted = lambda: bool(exp.jobs[0].handle)
                interrupt.job = exp.jobs[0]
                exp.run(detach=options.detach)
        except SubmitRefused:
            raise  # its one line says it all
        except BaseException:
            console.release()
            raise
        console.release()
        _report(exp, name, detached=options.detach)


def check_writable(option: str, path: str) -> None:
    """A file a command line option names can be written, checked before anything is rendered."""
    if os.path.isdir(path):
        raise RecipeError(option, f"{path} is a directory; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise RecipeError(option, f"{path}: its directory {folder} does not exist")


def write_text(option: str, path: str, text: str) -> None:
    """Write a file a command line option names; refuse a directory or an unwritable path in one line."""
    check_writable(option, path)
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        raise RecipeError(option, f"{path}: {e.strerror}") from None


class _HeldConsole(io.TextIOBase):
    """Where NeMo-Run's console writes during a launch: held back until the job is submitted, then passed
    on to stderr (with the job's streamed log). A refused submission drops what was held, NeMo-Run's
    many-line report of sbatch's error among it, so that the refusal is one line."""

    def __init__(self) -> None:
        self.held: list[str] | None = []
        self.submitted: Callable[[], bool] = lambda: False

    def write(self, text: str) -> int:
        if self.held is not None and self.submitted():
            self.release()
        if self.held is None:
            sys.stderr.write(text)
        else:
            self.held.append(text)
        return len(text)

    def release(self) -> None:
        if self.held is not None:
            sys.stderr.write("".join(self.held))
            self.held = None

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def job_name(name: str, exp_id: str) -> str:
    """``<task>-<the experiment id's last 6 digits>``: what squeue's NAME column starts with (NeMo-Run's
    default, ``<account>-<account>.<task>``, shows the same 8 characters for every job)."""
    return f"{name}-{exp_id[-6:]}"


def _named(executor: run.Executor, name: str, exp_id: str) -> run.Executor:
    if not isinstance(executor, run.SlurmExecutor):
        return executor
    named = executor.clone()
    named.job_details.job_name = job_name(name, exp_id)
    return named


@contextlib.contextmanager
def _submission_errors(executor: run.Executor, name: str, submitted: Callable[[], bool]) -> Iterator[None]:
    """sbatch's refusal (a bad account, partition, QOS...) or an SSH host that does not answer: one
    line, as bad input, instead of NeMo-Run's and paramiko's tracebacks. Once the job is submitted,
    errors pass as they are."""
    if not isinstance(executor, run.SlurmExecutor):
        yield
        return
    import invoke
    import paramiko

    try:
        yield
    except invoke.exceptions.UnexpectedExit as e:
        if submitted():
            raise
        said = [
            line.strip() for line in (e.result.stderr or e.result.stdout or "").splitlines() if line.strip()
        ]
        raise SubmitRefused(f"{name}: not submitted: {said[-1] if said else e.result.command}") from None
    except (OSError, paramiko.SSHException) as e:
        if submitted() or not isinstance(executor.tunnel, run.SSHTunnel):
            raise
        tunnel = executor.tunnel
        where = f"{tunnel.user}@{tunnel.host}" if tunnel.user else tunnel.host
        reason = " ".join(str(e).split()) or type(e).__name__
        raise SubmitRefused(f"--ssh-host: cannot reach {where}: {reason}") from None


class _CancelOnInterrupt:
    """While this command follows its job, a first Ctrl-C or SIGTERM cancels a Slurm job (scancel) and
    ends the command at once: NeMo-Run waits for the job in worker threads (and again as its Experiment
    exits) that only end with the job, so an interrupt would wait for it and leave it queued.
    ``--detach`` is the way to leave a job running."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, name: str) -> None:
        self.name = name
        self.job: run.Job | None = None
        self.submitted: Callable[[], bool] = lambda: False
        self.previous: dict[int, object] = {}

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():  # only it can take signals
            self.previous = {s: signal.signal(s, self.cancel) for s in self.SIGNALS}

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def cancel(self, signum: int, frame: object) -> None:
        job = self.job
        if job is None or not self.submitted():
            raise KeyboardInterrupt  # nothing submitted (yet)
        job_id = job.handle.rsplit("/", 1)[-1]
        tunnel = job.executor.tunnel  # type: ignore[attr-defined]
        result = tunnel.run(f"scancel {shlex.quote(job_id)}", warn=True, hide=True)
        done = "cancelled" if result.return_code == 0 else f"could not cancel ({result.stderr.strip()})"
        sys.stdout.flush()
        print(
            f"{self.name}: {done} job {job_id} on {signal.Signals(signum).name}; "
            "--detach leaves a job running",
            file=sys.__stderr__,
            flush=True,
        )
        os._exit(128 + signum)


@contextlib.contextmanager
def _job_home(slurm: SlurmOptions | None) -> Iterator[None]:
    """``--job-dir`` without ``--ssh-host``: NeMo-Run keeps the experiment (and the job's files, which
    the nodes read) under its home, so the job dir is NeMo-Run's home for this launch."""
    if not slurm or not slurm.job_dir or slurm.ssh_host:
        yield
        return
    from nemo_run import config

    safe.path("--job-dir", os.path.abspath(slurm.job_dir))  # NeMo-Run's mkdir of it is not quoted
    try:
        os.makedirs(slurm.job_dir, exist_ok=True)
    except OSError as e:
        raise RecipeError(
            "--job-dir", f"{slurm.job_dir}: {e.strerror}; without --ssh-host this machine is the login node"
        ) from None
    previous = config.get_nemorun_home()
    config.set_nemorun_home(os.path.abspath(slurm.job_dir))
    try:
        yield
    finally:
        config.set_nemorun_home(previous)


def _confirmed(executor: run.SlurmExecutor, name: str, options: LaunchOptions) -> bool:
    """Ask before a Slurm submission at a terminal, as NeMo-Run's CLI does; ``--yes`` skips it."""
    if options.yes or not sys.stdin.isatty():
        return True
    import typer  # NeMo-Run's CLI toolkit

    return typer.confirm(
        f"Submit {name}: {executor.nodes} node(s) x {executor.ntasks_per_node} task(s), "
        f"{executor.time}, account {executor.account}?",
        err=True,
    )


def _report(exp: run.Experiment, name: str, detached: bool) -> None:
    from nemo_run import config

    job, exp_id = exp.jobs[0], experiment_id(exp)
    job_id = (job.handle or "").rsplit("/", 1)[-1]  # slurm_tunnel://nemo_run/<job id>
    home = config.get_nemorun_home()  # the one a new `nemo` process reads unless told otherwise:
    default = os.environ.get("NEMORUN_HOME", os.path.expanduser("~/.nemo_run"))
    env = "" if home == default else f"NEMORUN_HOME={shlex.quote(home)} "
    if detached:
        print(
            f"{name}: submitted job {job_id} (experiment {exp_id}); follow it with\n"
            f"  {env}nemo experiment status {exp_id}\n"
            f"  {env}nemo experiment logs {exp_id} 0"
        )
        return
    state = job.state.name
    if state != "SUCCEEDED":
        print(_log_tail(job, job_id), file=sys.stderr)
        raise JobFailed(
            f"{name}: job {job_id} {state}{_restarts(job, job_id)} (the log tail is above; "
            f"{env}nemo experiment logs {exp_id} 0)"
        )
    print(f"{name}: job {job_id} {state}")


def _restarts(job: run.Job, job_id: str) -> str:
    """How often a job with ``--max-restarts`` was started again before it stopped (Slurm's count)."""
    executor = job.executor
    if not isinstance(executor, run.SlurmExecutor) or not executor.retries:
        return ""
    shown = executor.tunnel.run(f"scontrol show job -o {shlex.quote(job_id)}", warn=True, hide=True)
    count = next((w.split("=", 1)[1] for w in shown.stdout.split() if w.startswith("Restarts=")), "?")
    return f" after {count} restart(s) (--max-restarts {executor.retries}: it keeps failing)"


def _log_tail(job: run.Job, job_id: str) -> str:
    """The last lines of the job's log, read where the job wrote it: srun's output (every rank), else
    the batch script's (a job that failed before srun started)."""
    executor = job.executor
    if isinstance(executor, run.SlurmExecutor):
        folder = shlex.quote(executor.job_details.folder)
        logs = f"$(ls {folder}/log-*_{job_id}_* 2>/dev/null || ls {folder}/sbatch_*_{job_id}.out)"
        result = executor.tunnel.run(f"tail -n {LOG_TAIL_LINES} {logs}", warn=True, hide=True)
        return result.stdout or f"(no log of job {job_id} in {folder})"
    tails = []
    for path in sorted(glob.glob(os.path.join(executor.job_dir, "log*"))):
        with open(path, errors="replace") as f:
            tails.append(f"==> {path} <==\n" + "".join(f.readlines()[-LOG_TAIL_LINES:]))
    return "\n".join(tails) or f"(no log files in {executor.job_dir})"


def render_launch(task: run.Partial, executor: run.Executor, name: str) -> str:
    """What would be submitted: the sbatch script, or the local torchrun command and environment."""
    return _render(task, executor, name, keep=False)[0]


def _render(task: run.Partial, executor: run.Executor, name: str, keep: bool) -> tuple[str, str]:
    """The launch and the experiment directory it runs from. ``keep``: leave that directory (the job's
    serialized task, code and log directories) in place, so that ``sbatch FILE`` runs the script as
    this launch would; else NeMo-Run deletes it."""
    with contextlib.redirect_stdout(sys.stderr), run.Experiment(name, log_level="ERROR") as exp:
        exp.add(task, executor=_named(executor, name, experiment_id(exp)), name=name)
        exp.dryrun(log=False, delete_exp_dir=not keep)
    request = dryrun_request(exp)
    if hasattr(request, "materialize"):
        return request.materialize(), experiment_dir(exp)
    lines = []
    for replicas in request.role_params.values():
        for replica in replicas:
            lines += [f"export {k}={shlex.quote(str(v))}" for k, v in sorted(replica.env.items())]
            lines.append(shlex.join(replica.args))
    return "\n".join(lines), experiment_dir(exp)
