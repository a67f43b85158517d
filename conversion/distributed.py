"""torch.distributed and Megatron's model-parallel groups for one conversion task (train side).

Ranks come from torchrun (RANK/WORLD_SIZE) or srun (SLURM_*), read by Megatron-Bridge's helpers; a
plain ``python`` process is one rank. NCCL on GPUs, gloo where there are none (the CPU tests).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.bridge.utils.common_utils import (
    get_local_rank_preinit,
    get_master_addr_safe,
    get_master_port_safe,
    get_rank_safe,
    get_world_size_safe,
)
from megatron.core import parallel_state
from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

from conversion.checks import Parallelism
from dsv3_recipes.recipe.schema import RecipeError


@dataclass(frozen=True)
class Ranks:
    rank: int
    world_size: int

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes shared files (configs, renames); every rank takes part in collectives."""
        return self.rank == 0

    @property
    def last(self) -> int:
        return self.world_size - 1

    @staticmethod
    def barrier() -> None:
        dist.barrier()


def on_gpu() -> bool:
    return torch.cuda.is_available()


def _launched_by_a_launcher() -> bool:
    return "RANK" in os.environ or "SLURM_PROCID" in os.environ


def init_process_group() -> None:
    """This process's rank in the job (NCCL on GPUs, else gloo)."""
    if _launched_by_a_launcher():
        rank, world_size = get_rank_safe(), get_world_size_safe()
        address, port = get_master_addr_safe(), get_master_port_safe()
    else:
        rank, world_size, address = 0, 1, "localhost"
        with socket.socket() as s:  # a free port: several single-process tasks may share a machine
            s.bind((address, 0))
            port = s.getsockname()[1]
    if on_gpu():
        torch.cuda.set_device(get_local_rank_preinit())
    dist.init_process_group(
        "nccl" if on_gpu() else "gloo",
        init_method=f"tcp://{address}:{port}",
        rank=rank,
        world_size=world_size,
    )


@contextmanager
def model_parallel(parallel: Parallelism) -> Iterator[Ranks]:
    """Process group (unless the caller made one) and TP/PP/EP groups, torn down on exit."""
    created = not dist.is_initialized()
    if created:
        init_process_group()
    try:
        world_size = dist.get_world_size()
        if world_size % parallel.world_size:
            raise RecipeError(
                "--tp/--pp/--ep",
                f"TP={parallel.tp} PP={parallel.pp} EP={parallel.ep} needs a multiple of "
                f"{parallel.world_size} ranks (PP x lcm(TP, EP)); this job has {world_size}",
            )
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=parallel.tp,
            pipeline_model_parallel_size=parallel.pp,
            expert_model_parallel_size=parallel.ep,
            expert_tensor_parallel_size=1,
        )
        if on_gpu():
            model_parallel_cuda_manual_seed(0)
        yield Ranks(rank=dist.get_rank(), world_size=world_size)
    finally:
        parallel_state.destroy_model_parallel()
        if created:
            dist.destroy_process_group()
