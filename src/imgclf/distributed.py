"""torch.distributed set-up from SageMaker's resource config.

One process per GPU on each host (one process per host on CPU). Rank 0 is the first process on
the first host in sorted order, which is also the rendezvous address. A process started by
torchrun (RANK, WORLD_SIZE, LOCAL_RANK already set) keeps what torchrun gave it.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

DEFAULT_PORT = "29500"


@dataclass(frozen=True)
class Topology:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def processes_per_host() -> int:
    return max(1, torch.cuda.device_count())


def plan(hosts: list[str], current_host: str, interface: str | None = None,
         environ=os.environ) -> tuple[int, dict[str, str]]:
    """How many local processes to start and the torch.distributed variables they share.

    Returns (nproc, env) where env holds MASTER_ADDR, MASTER_PORT, WORLD_SIZE, the first global
    rank of this host as NODE_RANK_OFFSET, and the network interface for gloo and NCCL when
    resourceconfig.json names one; env is empty when training is single-process.
    """
    if "RANK" in environ and "WORLD_SIZE" in environ:  # torchrun or a test started us
        return 1, {}
    nproc = processes_per_host()
    world_size = len(hosts) * nproc
    if world_size == 1:
        return 1, {}
    env = {
        "MASTER_ADDR": environ.get("MASTER_ADDR", hosts[0]),
        "MASTER_PORT": environ.get("MASTER_PORT", DEFAULT_PORT),
        "WORLD_SIZE": str(world_size),
        "NODE_RANK_OFFSET": str(hosts.index(current_host) * nproc),
    }
    if interface and len(hosts) > 1 and interface_exists(interface):
        for var in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
            env[var] = environ.get(var, interface)
    return nproc, env


def interface_exists(name: str) -> bool:
    """Some runners name an interface the container lacks (SDK v3 local mode writes `ethwe`)."""
    return not os.path.isdir("/sys/class/net") or os.path.exists(f"/sys/class/net/{name}")


def init(local_rank: int = 0, environ=os.environ) -> Topology:
    """Join the process group described by the environment (see `plan`); a no-op for one process."""
    if "WORLD_SIZE" not in environ or int(environ["WORLD_SIZE"]) <= 1:
        return Topology()
    if "RANK" in environ:
        rank, local_rank = int(environ["RANK"]), int(environ.get("LOCAL_RANK", local_rank))
    else:
        rank = int(environ["NODE_RANK_OFFSET"]) + local_rank
    world_size = int(environ["WORLD_SIZE"])
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(
        backend,
        init_method=f"tcp://{environ['MASTER_ADDR']}:{environ['MASTER_PORT']}",
        rank=rank,
        world_size=world_size,
    )
    log.info("joined process group: rank %d of %d (%s)", rank, world_size, backend)
    return Topology(rank=rank, world_size=world_size, local_rank=local_rank)


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
