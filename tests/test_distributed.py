from imgclf import distributed


def test_single_host_cpu_is_one_process(monkeypatch):
    monkeypatch.setattr(distributed, "processes_per_host", lambda: 1)
    assert distributed.plan(["algo-1"], "algo-1", environ={}) == (1, {})


def test_two_hosts_rank_from_sorted_position(monkeypatch):
    monkeypatch.setattr(distributed, "processes_per_host", lambda: 1)
    monkeypatch.setattr(distributed, "interface_exists", lambda name: name == "eth0")
    assert "GLOO_SOCKET_IFNAME" not in distributed.plan(["algo-1", "algo-2"], "algo-2", "ethwe", environ={})[1]
    nproc, env = distributed.plan(["algo-1", "algo-2"], "algo-2", "eth0", environ={})
    assert nproc == 1
    assert env == {"MASTER_ADDR": "algo-1", "MASTER_PORT": "29500", "WORLD_SIZE": "2", "NODE_RANK_OFFSET": "1",
                   "GLOO_SOCKET_IFNAME": "eth0", "NCCL_SOCKET_IFNAME": "eth0"}


def test_gpus_multiply_processes_and_offset_ranks(monkeypatch):
    monkeypatch.setattr(distributed, "processes_per_host", lambda: 4)
    nproc, env = distributed.plan(["a", "b"], "b", environ={})
    assert nproc == 4 and env["WORLD_SIZE"] == "8" and env["NODE_RANK_OFFSET"] == "4"


def test_torchrun_environment_is_kept(monkeypatch):
    monkeypatch.setattr(distributed, "processes_per_host", lambda: 4)
    assert distributed.plan(["a", "b"], "a", environ={"RANK": "3", "WORLD_SIZE": "8"}) == (1, {})


def test_init_without_world_is_single_process():
    topology = distributed.init(environ={})
    assert (topology.rank, topology.world_size, topology.distributed) == (0, 1, False)
