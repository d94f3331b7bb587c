"""torch.distributed for a job that torchrun started (imgclf.train.toolkit starts it on SageMaker).

torchrun gives each process RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and
MASTER_PORT; the process group joins through them (env://). A process started without them is the
whole job. NCCL on GPU, gloo on CPU.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Topology:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # the job's processes on this host

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def processes_per_host(environ: Mapping[str, str] = os.environ) -> int:
    """The processes of this job on this host (torchrun's LOCAL_WORLD_SIZE)."""
    return max(1, int(environ.get("LOCAL_WORLD_SIZE", 1)))


def backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init(environ: Mapping[str, str] = os.environ) -> Topology:
    """Join the process group that torchrun describes; a no-op for one process."""
    world_size = int(environ.get("WORLD_SIZE", 1))
    if world_size <= 1:
        return Topology()
    rank, local_rank = int(environ["RANK"]), int(environ.get("LOCAL_RANK", 0))
    if backend() == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend(), rank=rank, world_size=world_size)  # env://: torchrun's store
    log.info("joined process group: rank %d of %d (%s)", rank, world_size, backend())
    return Topology(rank=rank, world_size=world_size, local_rank=local_rank,
                    local_world_size=processes_per_host(environ))


def all_sum(values: list[float], topology: Topology, device) -> list[float]:
    """Element-wise sum over all ranks (identity for one process)."""
    if not topology.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, topology: Topology, device) -> bool:
    """True on every rank when it is true on one (so all ranks stop at the same step)."""
    return all_sum([float(flag)], topology, device)[0] > 0


def cleanup(topology: Topology) -> None:
    if topology.distributed and dist.is_initialized():
        dist.destroy_process_group()
