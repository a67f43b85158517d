"""`dsv3 preprocess`: C4-style json(.gz) shards -> one Megatron-Core .bin/.idx dataset.

Each document's text is tokenized with a local Hugging Face tokenizer, without special tokens, and
closed with the tokenizer's EOS token as Megatron's end-of-document (what Megatron-LM's
tools/preprocess_data.py writes for a HuggingFaceTokenizer with --append-eod). Documents keep the
input order, shards as given and lines as in the file: the MLPerf validation set is "the first 1,024
sequences" of that order (``train/mlperf_data.py`` cuts them at training time). A pool of processes
tokenizes batches of lines; the parent writes them in order with Megatron-Core's IndexedDatasetBuilder.

    dsv3 preprocess -i '/raw/c4-train.0000[0-7]-of-01024.json.gz' -o /data/c4-train.en_0 \\
        --tokenizer /data/tokenizer [--executor slurm --account A --container-image IMG] [--dryrun|--detach]

writes /data/c4-train.en_0_text_document.{bin,idx}. The task runs where the executor puts it (this
machine, or one Slurm node in the training image); this module imports nothing heavy at module level.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import multiprocessing
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from dsv3_recipes.launch import code_check

if TYPE_CHECKING:
    import nemo_run

    from dsv3_recipes.launch.options import LaunchOptions

_tokenizer = None  # each worker's own tokenizer


def dataset_prefix(output_prefix: str, json_key: str = "text") -> str:
    """Megatron's naming: ``<output_prefix>_<json_key>_document``."""
    return f"{output_prefix}_{json_key}_document"


def expand(inputs: list[str]) -> list[str]:
    """Files in the order given; a glob contributes its matches sorted. An empty pattern is an error."""
    files = []
    for pattern in inputs:
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise ValueError(f"inputs: {pattern} matches no file")
        files += matches
    return files


def _line_batches(files: list[str], batch_size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for path in files:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    batch.append(line)
                if len(batch) == batch_size:
                    yield batch
                    batch = []
    if batch:
        yield batch


def _init_worker(tokenizer_dir: str) -> None:
    global _tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the pool is the parallelism
    from transformers import AutoTokenizer

    _tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)


def _encode(args: tuple[list[str], str]) -> list[list[int]]:
    lines, json_key = args
    texts = [json.loads(line)[json_key] for line in lines]
    ids = _tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [doc + [_tokenizer.eos_token_id] for doc in ids]


def preprocess(
    inputs: list[str],
    output_prefix: str,
    tokenizer: str,
    workers: int = 8,
    json_key: str = "text",
    batch_size: int = 256,
) -> str:
    """Tokenize ``inputs`` (json lines, optionally gzipped) into ``<output_prefix>_<json_key>_document``."""
    code_check.check()
    from transformers import AutoTokenizer

    files = expand(inputs)
    hf_tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    if hf_tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer: {tokenizer} has no EOS token to end documents with")
    prefix = dataset_prefix(output_prefix, json_key)
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    # Fork the workers before megatron-core (and torch) are imported here.
    pool = multiprocessing.get_context("fork").Pool(workers, _init_worker, (tokenizer,))
    with pool:
        from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

        builder = IndexedDatasetBuilder(prefix + ".bin", dtype=DType.optimal_dtype(len(hf_tokenizer)))
        batches = ((lines, json_key) for lines in _line_batches(files, batch_size))
        documents = 0
        for docs in pool.imap(_encode, batches):
            for doc in docs:
                builder.add_document(doc, [len(doc)])
            documents += len(docs)
        builder.finalize(prefix + ".idx")
    print(f"preprocess: {documents} documents from {len(files)} file(s) -> {prefix}.bin/.idx", flush=True)
    return prefix


def add_arguments(subparsers: argparse._SubParsersAction) -> None:
    """The `dsv3 preprocess` subcommand."""
    from dsv3_recipes.launch.options import LaunchOptions

    p = subparsers.add_parser(
        "preprocess", help="C4 json(.gz) shards -> Megatron .bin/.idx with a Hugging Face tokenizer"
    )
    p.add_argument(
        "--input", "-i", action="append", required=True, help="json(.gz) file or glob; repeat, order kept"
    )
    p.add_argument("--output-prefix", "-o", required=True, help="writes <prefix>_text_document.bin/.idx")
    p.add_argument(
        "--tokenizer", required=True, help="local Hugging Face tokenizer dir ($DATA_DIR/tokenizer)"
    )
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="tokenizer processes")
    p.add_argument("--json-key", default="text")
    p.add_argument(
        "--gpu-type",
        default=os.environ.get("GPU_TYPE", "h100"),
        help="picks the default container image for Slurm, the one pretrain uses (default: $GPU_TYPE, "
        "else h100)",
    )
    LaunchOptions.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the arguments, then run (or render) the preprocessing task on the chosen executor."""
    import nemo_run

    from dsv3_recipes.launch.options import LaunchOptions
    from dsv3_recipes.launch.submit import run_task

    options = LaunchOptions.from_args(args)
    task = nemo_run.Partial(
        preprocess,
        inputs=list(args.input),
        output_prefix=args.output_prefix,
        tokenizer=args.tokenizer,
        workers=args.workers,
        json_key=args.json_key,
    )
    executor = _executor(args, options)
    if options.dryrun:
        print(f"# {task!r}", file=sys.stderr)
    run_task(task, executor, f"preprocess-{os.path.basename(args.output_prefix)}", options)
    return 0


def _check_output(output_prefix: str, json_key: str, overwrite: bool) -> None:
    """The output prefix names a file (the job's name is its base name) and writes over no dataset
    unless ``--overwrite``: a job that rewrites a ``.bin`` other runs read corrupts them."""
    from dsv3_recipes.launch import safe
    from dsv3_recipes.recipe.schema import RecipeError

    safe.path("--output-prefix", output_prefix)  # a path of the job's command line and mounts
    safe.name("--output-prefix", os.path.basename(output_prefix))
    safe.name("--json-key", json_key)
    prefix = dataset_prefix(output_prefix, json_key)
    found = [prefix + ext for ext in (".bin", ".idx") if os.path.exists(prefix + ext)]
    if found and not overwrite:
        raise RecipeError(
            "--output-prefix", f"{found[0]} exists; give another prefix, or --overwrite to replace it"
        )


def _executor(args: argparse.Namespace, options: LaunchOptions) -> nemo_run.Executor:
    import nemo_run

    from dsv3_recipes.launch import executors
    from dsv3_recipes.recipe.schema import RecipeError

    if args.workers < 1:
        raise RecipeError("--workers", f"must be >= 1, got {args.workers}")
    _check_output(args.output_prefix, args.json_key, options.overwrite)
    if options.executor == "local":
        expand(args.input)  # the inputs and the tokenizer must be here
        if not os.path.isfile(os.path.join(args.tokenizer, "tokenizer_config.json")):
            raise RecipeError("--tokenizer", f"{args.tokenizer} is not a Hugging Face tokenizer directory")
        return nemo_run.LocalExecutor(ntasks_per_node=1)
    from dsv3_recipes.launch.job_paths import RecipePath, glob_directory
    from dsv3_recipes.recipe.images import image_for

    paths = [RecipePath("--input", glob_directory(p), output=False, is_dir=True) for p in args.input]
    paths += [
        RecipePath("--tokenizer", args.tokenizer, output=False, is_dir=True),
        RecipePath("--output-prefix", args.output_prefix, output=True, is_dir=False),
    ]
    return executors.for_paths(
        paths,
        **options.slurm.executor_kwargs(image_for(args.gpu_type)),  # the image pretrain runs in
        nodes=1,
        gpus_per_node=1,  # one task; the node's cores go to --workers
        env_vars={"TOKENIZERS_PARALLELISM": "false"},
    )
