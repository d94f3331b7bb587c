import pytest

from imgclf import distributed


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

