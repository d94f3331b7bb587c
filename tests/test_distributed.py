import argparse
import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port
from torch import nn

from imgclf.train import builders, distributed, precision


def test_init_without_world_is_single_process():
    topology = distributed.init(environ={})
    assert (topology.rank, topology.world_size, topology.distributed, topology.is_main) == (0, 1, False, True)
    assert distributed.init(environ={"WORLD_SIZE": "1", "RANK": "0"}) == distributed.Topology()


def test_processes_per_host_is_torchruns_local_world_size():
    assert distributed.processes_per_host({}) == 1
    assert distributed.processes_per_host({"LOCAL_WORLD_SIZE": "4"}) == 4


def test_a_rank_without_its_rank_variable_is_refused():
    with pytest.raises(KeyError, match="RANK"):
        distributed.init(environ={"WORLD_SIZE": "2"})


def _choose_precision_on_rank(rank: int, port: int, probe_says: list[bool], out) -> None:
    """One rank of a CPU job whose precision probe answers `probe_says[rank]` (the probe is timed, so
    ranks may disagree); writes what the job then runs."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=len(probe_says))
    try:
        def probe_choice(model, device, **_):
            model.to(memory_format=precision.memory_format(probe_says[rank]))
            return probe_says[rank]

        precision.choose = probe_choice
        args = argparse.Namespace(amp=True, features=False, extract_features=False, image_size=8, batch_size=2)
        job = builders.Job(args, None, distributed.Topology(rank, len(probe_says)), torch.device("cpu"), None, 0)
        model = nn.Conv2d(3, 4, 3)
        builders.choose_precision(job, model)
        (out / f"{rank}.json").write_text(json.dumps([job.args.amp, model.weight.is_contiguous()]))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("probe_says, runs_bf16", [([True, False], False), ([False, True], False),
                                                   ([True, True], True)])
def test_every_rank_runs_one_precision_and_layout(tmp_path, probe_says, runs_bf16):
    """DDP refuses parameters whose strides differ between ranks (channels_last on one only)."""
    mp.spawn(_choose_precision_on_rank, args=(free_port(), probe_says, tmp_path), nprocs=len(probe_says))
    ran = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(len(probe_says))]
    assert ran == [[runs_bf16, not runs_bf16]] * len(probe_says)  # channels_last weights are not contiguous
