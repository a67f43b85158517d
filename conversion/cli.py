"""`dsv3 convert import|export|verify|generate`: DeepSeek-V3 checkpoints between Hugging Face and
Megatron-Bridge, run as NeMo-Run tasks on this machine (torchrun) or as a Slurm job.

The conversion runs on PP x lcm(TP, EP) GPUs. Megatron's torch_dist checkpoints reshard on load, so
TP/PP/EP only choose how many GPUs share the conversion. Without the ``dsv3`` script (a container
running a checkout), ``python -m dsv3_recipes.cli convert import ...`` is the same.
"""

from __future__ import annotations

import argparse
import os


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _add_launch_arguments(p: argparse.ArgumentParser) -> None:
    from dsv3_recipes.launch.options import LaunchOptions
    from dsv3_recipes.recipe.images import PLATFORM_FOR_GPU

    g = p.add_argument_group("conversion layout")
    g.add_argument("--tp", type=_positive_int, default=1, help="tensor parallel size (divides the heads)")
    g.add_argument("--pp", type=_positive_int, default=1, help="pipeline stages (divides the layers)")
    g.add_argument("--ep", type=_positive_int, default=1, help="expert parallel size (divides the experts)")
    p.add_argument("--gpus-per-node", type=_positive_int, default=os.environ.get("GPUS_PER_NODE", "8"))
    p.add_argument(
        "--gpu-type",
        default=os.environ.get("GPU_TYPE", "h100"),
        choices=sorted(PLATFORM_FOR_GPU),
        help="picks the default container image for Slurm (default: $GPU_TYPE, else h100)",
    )
    LaunchOptions.add_arguments(p)


def add_arguments(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``convert`` (with import, export, verify, generate) to the ``dsv3`` subcommands."""
    convert = subparsers.add_parser(
        "convert",
        help="HF <-> Megatron checkpoint conversion, logit verification, generation check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = convert.add_subparsers(dest="conversion", required=True)

    p = sub.add_parser("import", help="HF checkpoint (BF16 or FP8) -> Megatron torch_dist checkpoint")
    p.add_argument("--hf-path", required=True, help="DeepSeek-V3 HF checkpoint directory")
    p.add_argument("--megatron-path", required=True, help="output directory (must not exist, or be empty)")
    _add_launch_arguments(p)

    p = sub.add_parser("export", help="Megatron checkpoint -> HF safetensors directory (BF16)")
    p.add_argument("--megatron-path", required=True, help="Megatron-Bridge checkpoint directory")
    p.add_argument("--hf-path", required=True, help="output directory (must not exist, or be empty)")
    p.add_argument(
        "--hf-reference", required=True, help="HF checkpoint the model came from: config, tokenizer, sharding"
    )
    _add_launch_arguments(p)

    p = sub.add_parser("verify", help="compare the Megatron checkpoint's logits with the HF checkpoint's")
    p.add_argument("--hf-path", required=True)
    p.add_argument("--megatron-path", required=True)
    p.add_argument("--batch-size", type=_positive_int, default=2)
    p.add_argument("--seq-length", type=_positive_int, default=64)
    p.add_argument("--max-mean-rel-error", type=float, default=0.01, help="mean |diff| / max |HF logit|")
    p.add_argument("--min-top1-agreement", type=float, default=0.95)
    p.add_argument("--report", help="write the comparison as JSON here")
    _add_launch_arguments(p)

    p = sub.add_parser("generate", help="greedy generation from a Megatron checkpoint")
    p.add_argument("--hf-path", required=True, help="HF checkpoint with the tokenizer")
    p.add_argument("--megatron-path", required=True)
    p.add_argument("--prompt", default="The capital of France is")
    p.add_argument("--max-new-tokens", type=_positive_int, default=16)
    _add_launch_arguments(p)

    convert.set_defaults(func=run)
    return convert


def run(args: argparse.Namespace) -> int:
    """Check, build and submit (or dry-run) the conversion the arguments describe."""
    from conversion import launch
    from conversion.checks import Parallelism
    from dsv3_recipes.launch.options import LaunchOptions

    options = LaunchOptions.from_args(args)
    parallel = Parallelism(args.tp, args.pp, args.ep)
    if args.conversion == "import":
        job = launch.import_job(args.hf_path, args.megatron_path, parallel, args.executor)
    elif args.conversion == "export":
        job = launch.export_job(args.megatron_path, args.hf_path, args.hf_reference, parallel, args.executor)
    elif args.conversion == "verify":
        job = launch.verify_job(
            args.hf_path,
            args.megatron_path,
            parallel,
            args.executor,
            batch_size=args.batch_size,
            seq_length=args.seq_length,
            max_mean_rel_error=args.max_mean_rel_error,
            min_top1_agreement=args.min_top1_agreement,
            report_path=args.report,
        )
    else:
        job = launch.generate_job(
            args.hf_path, args.megatron_path, args.prompt, args.max_new_tokens, parallel, args.executor
        )
    executor = launch.make_executor(
        args.executor,
        parallel.world_size,
        slurm=options.slurm,
        gpus_per_node=args.gpus_per_node,
        gpu_type=args.gpu_type,
        dryrun=options.dryrun,
        paths=job.paths,
    )
    launch.submit(job, executor, options)
    return 0
