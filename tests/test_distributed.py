"""torch.distributed for the training job: the process group, the loader workers per process, one
precision on every rank, and SIGTERM seen at the same step on every rank."""
import argparse
import json
import os
import signal
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port
from torch import nn

from imgclf.callbacks import Callback, Callbacks
from imgclf.names import cpu_count
from imgclf.train import builders, distributed, precision
from imgclf.train.engine import Learner, StopRequest, train_one_epoch


def test_init_without_world_is_single_process():
    topology = distributed.init(environ={})
    assert (topology.rank, topology.world_size, topology.distributed, topology.is_main) == (0, 1, False, True)
    assert distributed.init(environ={"WORLD_SIZE": "1", "RANK": "0"}) == distributed.Topology()


def test_processes_per_host_is_torchruns_local_world_size():
    assert distributed.processes_per_host({}) == 1
    assert distributed.processes_per_host({"LOCAL_WORLD_SIZE": "4"}) == 4


def test_loader_workers_share_the_hosts_cpus_among_its_processes():
    assert builders.default_workers(distributed.Topology()) == cpu_count()
    assert builders.default_workers(distributed.Topology(0, 4, 0, local_world_size=2)) == max(1, cpu_count() // 2)
    assert builders.default_workers(distributed.Topology(0, 64, 0, local_world_size=cpu_count() + 1)) == 1


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
        mixed = builders.choose_precision(job, model)
        assert job.args.amp  # the decision is returned, the job's arguments stay as given
        (out / f"{rank}.json").write_text(json.dumps([mixed, model.weight.is_contiguous()]))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("probe_says, runs_bf16", [([True, False], False), ([False, True], False),
                                                   ([True, True], True)])
def test_every_rank_runs_one_precision_and_layout(tmp_path, probe_says, runs_bf16):
    """DDP refuses parameters whose strides differ between ranks (channels_last on one only)."""
    mp.spawn(_choose_precision_on_rank, args=(free_port(), probe_says, tmp_path), nprocs=len(probe_says))
    ran = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(len(probe_says))]
    assert ran == [[runs_bf16, not runs_bf16]] * len(probe_says)  # channels_last weights are not contiguous


STEPS = 10  # per epoch, in the tests of SIGTERM below
SIGTERM_AFTER_STEP = 4


class SigtermAfter(Callback):
    """Sends this process SIGTERM at the end of a step, as `docker stop` would during the next."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, record):
        if record.epoch == 1 and record.step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def two_epochs(topology: distributed.Topology, stop: StopRequest, callbacks: Callbacks) -> list[list]:
    """[steps trained, interrupted] of each epoch of a tiny job, until SIGTERM stops it."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    learner = Learner(model, model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1),
                      torch.amp.GradScaler("cpu", enabled=False), torch.device("cpu"), topology, callbacks)
    batches = [(torch.randn(2, 4), torch.tensor([0, 1]), 0)] * STEPS
    previous = signal.getsignal(signal.SIGTERM)
    stop.install()
    epochs = []
    try:
        for epoch in (1, 2):
            tally, interrupted = train_one_epoch(learner, batches, epoch, stop)
            epochs.append([tally.seen // 2, interrupted])
            if interrupted:
                break
    finally:
        signal.signal(signal.SIGTERM, previous)
    return epochs


def test_one_process_stops_at_the_step_after_sigterm_whatever_the_ranks_interval():
    stop = StopRequest(every=3)  # only ranks need to agree, and only they wait for it
    callbacks = Callbacks([SigtermAfter(SIGTERM_AFTER_STEP)])
    assert two_epochs(distributed.Topology(), stop, callbacks) == [[SIGTERM_AFTER_STEP, True]]


def _stop_on_rank(rank: int, port: int, signalled: int, every: int, out) -> None:
    """One of two ranks of a job that trains without DDP (nothing else keeps the ranks in step);
    rank `signalled` alone gets SIGTERM. Writes each epoch's [steps trained, interrupted]."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))  # a rank left waiting for the other fails, not hangs
    try:
        callbacks = Callbacks([SigtermAfter(SIGTERM_AFTER_STEP)] if rank == signalled else [])
        epochs = two_epochs(distributed.Topology(rank, 2), StopRequest(every), callbacks)
        (out / f"{rank}.json").write_text(json.dumps(epochs))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("signalled, every, epochs", [
    (1, 1, [[4, True]]),  # a CPU job: the ranks agree before every step
    (0, 3, [[6, True]]),  # agreement before steps 1, 4, 7, 10: the first after SIGTERM is 7
    (1, STEPS + 1, [[STEPS, False], [0, True]]),  # none after SIGTERM in epoch 1: the next epoch's first
])
def test_every_rank_stops_at_the_same_step_when_one_gets_sigterm(tmp_path, signalled, every, epochs):
    mp.spawn(_stop_on_rank, args=(free_port(), signalled, every, tmp_path), nprocs=2)
    assert [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)] == [epochs, epochs]


def test_ranks_agree_on_sigterm_every_step_on_a_cpu_and_every_few_steps_on_cuda():
    assert StopRequest.for_device(torch.device("cpu")).every == 1
    assert 1 < StopRequest.for_device(torch.device("cuda")).every <= 50
