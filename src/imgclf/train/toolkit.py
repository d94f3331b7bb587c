"""`docker run IMAGE train`: sagemaker-training's trainer, as in AWS's PyTorch containers.

The image's `train` command is sagemaker-training's; SAGEMAKER_TRAINING_MODULE (docker/Dockerfile)
names `main` here, as AWS's PyTorch containers name theirs. The program is the estimator's entry
point when it gives one (sagemaker_program and sagemaker_submit_directory, which the SDK's
`PyTorch(entry_point=..., source_dir=...)` sends), else imgclf-train:

- imgclf-train: one process, or torchrun when the job has several (more than one host, GPUs, or
  the processes-per-host hyperparameter on CPU). Its command line is empty: it reads the job
  through contract.py.
- a user's script, as in AWS's PyTorch container: one process per host with the hyperparameters
  as `--name value` arguments, or torchrun when the estimator says
  `distribution={"torch_distributed": {"enabled": True}}`.

torchrun is started by sagemaker-training's TorchDistributedRunner: nnodes and node_rank from
resourceconfig.json, the first host as master, after every host's name resolves. SIGTERM (a spot
interruption, `docker stop`) is passed on to the program; torchrun passes it to its workers, and
imgclf-train's ranks checkpoint. The failure file keeps the first reason written (imgclf-train's
own, else this module's, else sagemaker-training's); the exit code is the program's.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..names import UserError
from . import hyperparameters as table
from .contract import failure_reason, write_failure

log = logging.getLogger(__name__)

TRAIN_PROGRAM = str(Path(__file__).parents[1] / "programs" / "imgclf_train.py")  # imgclf/programs/
PROCESSES_PER_HOST = "processes-per-host"  # the image's own, not passed to a user's script
TORCH_DISTRIBUTED_ENABLED = "sagemaker_torch_distributed_enabled"  # what the SDK sends for torch_distributed
OTHER_DISTRIBUTIONS = ("sagemaker_mpi_enabled", "sagemaker_parameter_server_enabled",
                       "sagemaker_distributed_dataparallel_enabled", "sagemaker_pytorch_ddp_enabled",
                       "sagemaker_pytorch_xla_multi_worker_enabled", "sagemaker_multi_worker_mirrored_strategy_enabled")
SHELLS = ("sh", "dash", "bash")
HOST_WAIT_S = 15 * 60  # as long as sagemaker-training waits for a user's script


@dataclass(frozen=True)
class Launch:
    """What this host starts: a Python script, its arguments, and how many copies of it."""

    program: str
    args: list[str] = field(default_factory=list)
    processes_per_host: int = 1
    torchrun: bool = False

    @property
    def user_script(self) -> bool:
        return self.program != TRAIN_PROGRAM


def plan(user_entry_point: str | None, hyperparameters: Mapping[str, object], framework: Mapping[str, object],
         hosts: list[str], num_gpus: int) -> Launch:
    """The launch for a job: `hyperparameters` as sagemaker-training decoded them (sagemaker_* split
    off into `framework`); GPU instances run one process per GPU."""
    per_host = num_gpus or _processes_per_host(hyperparameters)
    torch_distributed = bool(framework.get(TORCH_DISTRIBUTED_ENABLED))
    if not user_entry_point:
        return Launch(TRAIN_PROGRAM, [], per_host, torch_distributed or len(hosts) * per_host > 1)
    asked = [name for name in OTHER_DISTRIBUTIONS if framework.get(name)]
    if asked:
        raise UserError(f"this image runs torch_distributed only, not {', '.join(asked)}: give the estimator "
                        'distribution={"torch_distributed": {"enabled": True}}')
    from sagemaker_training import mapping

    args = mapping.to_cmd_args({k: v for k, v in hyperparameters.items() if k != PROCESSES_PER_HOST})
    return Launch(user_entry_point, args, per_host, torch_distributed)


def _processes_per_host(hyperparameters: Mapping[str, object]) -> int:
    if PROCESSES_PER_HOST not in hyperparameters:
        return table.BY_NAME[PROCESSES_PER_HOST].default
    value = hyperparameters[PROCESSES_PER_HOST]  # decoded by sagemaker-training: 2, not "2"
    return table.parse({PROCESSES_PER_HOST: str(value)}).processes_per_host


def wait_for_hosts(hosts: list[str], timeout_s: float = HOST_WAIT_S) -> None:
    """SageMaker's instances get their names a little apart: wait until each resolves."""
    deadline = time.monotonic() + timeout_s
    for host in hosts:
        while True:
            try:
                socket.gethostbyname(host)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"host {host} did not resolve within {timeout_s:.0f} s") from None
                time.sleep(1)


def set_distributed_environment(env) -> None:
    """As AWS's PyTorch container: MASTER_ADDR and MASTER_PORT for a script that joins its group from
    them (torchrun sets its own), and gloo and NCCL between hosts on resourceconfig.json's interface
    when the container has it (some runners name one it lacks: SDK v3 local mode writes `ethwe`)."""
    from sagemaker_training import torch_distributed

    os.environ.setdefault("MASTER_ADDR", env.master_hostname)
    os.environ.setdefault("MASTER_PORT", torch_distributed.MASTER_PORT)
    if len(env.hosts) > 1 and os.path.exists(f"/sys/class/net/{env.network_interface_name}"):
        for var in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
            os.environ.setdefault(var, env.network_interface_name)


class SigtermRelay:
    """`docker stop` and a spot interruption signal PID 1, this process: pass SIGTERM to the program."""

    def __init__(self):
        self.received = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._relay)

    def _relay(self, signum, frame) -> None:
        import psutil

        self.received = True
        log.warning("SIGTERM received: passed on to the program")
        for program in _programs(psutil.Process()):
            try:
                program.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass


def _programs(process) -> list:
    """The child processes that are programs: python or torchrun, also under the `/bin/sh -c` through
    which sagemaker-training starts a user's script (a shell that got SIGTERM would end at once and
    take the job with it; its program's DataLoader workers and torchrun's ranks are left to them)."""
    programs = []
    for child in process.children():
        programs.extend(child.children() if child.name() in SHELLS else [child])
    return programs


class ProgramExit(Exception):
    """The program failed: sagemaker-training's trainer exits with `errno` and keeps the failure
    file that is already there."""

    def __init__(self, program: str, code: int):
        super().__init__(f"{os.path.basename(program)} exited with code {code}")
        self.errno = code


def start(launch: Launch, env) -> int:
    """Run the program to its end with sagemaker-training's runners; its exit code.

    A user's script fails as in AWS's container: sagemaker-training's error, stderr included."""
    from sagemaker_training import entry_point, environment, errors, process, torch_distributed

    env_vars = env.to_env_vars()
    if launch.torchrun:
        runner = torch_distributed.TorchDistributedRunner(
            launch.program, launch.args, env_vars, launch.processes_per_host, env.master_hostname,
            env.distribution_hosts, env.current_host, env.network_interface_name,
            instance_type=env.current_instance_type)
    else:
        runner = process.ProcessRunner(launch.program, launch.args, env_vars, launch.processes_per_host)
    if launch.user_script:
        entry_point.run(env.module_dir, launch.program, launch.args, env_vars, capture_error=True,
                        runner_type=runner)
        return 0
    environment.write_env_vars(env_vars)
    try:
        runner.run(wait=True, capture_error=False)
    except errors.ExecuteUserScriptError as e:
        return int(e.return_code)
    return 0


def main() -> None:
    """What SAGEMAKER_TRAINING_MODULE names: the trainer calls it inside its own failure boundary."""
    from sagemaker_training import environment

    env = environment.Environment()
    failure_file = Path(env.output_dir) / "failure"
    failure_file.unlink(missing_ok=True)  # a reason left by an earlier run on this machine
    try:
        launch = plan(env.user_entry_point, env.hyperparameters, env.additional_framework_parameters,
                      env.distribution_hosts, env.num_gpus)
    except UserError as e:
        write_failure(failure_file, failure_reason(e))
        raise ProgramExit("imgclf.toolkit", 2) from e
    if len(env.hosts) > 1:
        wait_for_hosts(env.hosts)
    set_distributed_environment(env)
    relay = SigtermRelay()
    relay.install()
    log.info("starting %s: %d process(es) per host on %d host(s)%s", launch.program, launch.processes_per_host,
             len(env.distribution_hosts), " through torchrun" if launch.torchrun else "")
    code = start(launch, env)
    if code and relay.received:
        code = 128 + signal.SIGTERM
        write_failure(failure_file, "stopped by SIGTERM; a rerun resumes from the checkpoint")
    elif code:
        write_failure(failure_file, f"AlgorithmError: {os.path.basename(launch.program)} exited with code {code}")
    if code:
        raise ProgramExit(launch.program, code)
