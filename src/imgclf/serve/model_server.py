"""multi-model-server behind the front (front.py): its config, its process (the launcher, the JVM
and the Python model workers, one process group) on a private loopback port, and the single
model's registration.
"""
from __future__ import annotations

import http.client
import logging
import os
import pwd
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import sagemaker_inference

from .environment import IN_MEMORY_BYTES, MODEL_NAME, ServingEnvironment
from .privileges import user_environment
from .profiles import MiB
from .spool import SPOOL_DIR_ENV

log = logging.getLogger("imgclf.serve")

HANDLER_SERVICE = "imgclf.serve.mms_entry:handle"  # handler_service.HandlerService, its answers padded (mms_entry.py)
MMS_LOG_CONFIG = Path(sagemaker_inference.__file__).parent / "etc" / "log4j2.xml"
STOP_GRACE_S = 8  # after the front's drain (server.DRAIN_S): SageMaker sends SIGKILL 30 s after SIGTERM


def mms_worker_timeout_s(env: ServingEnvironment) -> int:
    """MMS's wait for a worker's reply, past which it restarts the worker: at least the start-up timeout
    (the wait covers loading the model) and past the front's, so a slow request gets the front's 504
    while its worker carries on. In seconds: MMS 1.1.11 reads `default_response_timeout` and a
    registration's `response_timeout` query parameter as minutes (aws/sagemaker-inference-toolkit#99)."""
    return max(env.response_timeout_s + 30, env.startup_timeout_s)


def jvm_options(env: ServingEnvironment) -> str:
    """A fixed heap (environment.py says why), unless SAGEMAKER_MODEL_SERVER_VMARGS sets its own -Xmx."""
    if "-Xmx" in env.vmargs:
        return env.vmargs
    heap = env.jvm_heap_bytes // MiB
    return f"{env.vmargs} -Xms{heap}m -Xmx{heap}m -XX:+AlwaysPreTouch"


def mms_config(env: ServingEnvironment, port: int) -> str:
    """multi-model-server's config.properties for a private port on the loopback interface."""
    props = {
        "inference_address": f"http://127.0.0.1:{port}",
        "management_address": f"http://127.0.0.1:{port}",
        "model_store": "/",
        "load_models": "",
        "default_service_handler": HANDLER_SERVICE,
        "default_workers_per_model": env.workers,
        "default_response_timeout_seconds": mms_worker_timeout_s(env),
        "decode_input_request": "false",
        # the front refuses bodies over the limit (JSON reason), spools large ones; room for headers
        "max_request_size": min(env.max_payload_bytes, IN_MEMORY_BYTES) + MiB,
        "max_response_size": 64 * 1024 * 1024,
        "job_queue_size": 1000,
        "vmargs": jvm_options(env),
        "enable_envvars_config": "false",
    }
    return "".join(f"{key}={value}\n" for key, value in props.items())


def register_defaults(env: ServingEnvironment) -> dict[str, int]:
    """Batching and workers for every model registered (the single model, or each MME model)."""
    return {
        "batch_size": env.batch_size,
        "max_batch_delay": env.max_batch_delay_ms,
        "initial_workers": env.workers,
    }


def free_port() -> int:
    """A free loopback port below 32767, the highest that MMS accepts (the kernel's picks lie above)."""
    for port in random.sample(range(20000, 32767), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port for multi-model-server between 20000 and 32766")


def request(port: int, method: str, path: str, timeout: float) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class ModelServer:
    """multi-model-server in its own process group, with its config and logs in `run_dir`."""

    def __init__(self, env: ServingEnvironment, run_dir: Path, port: int, user: pwd.struct_passwd | None = None):
        """Started as `user` when given (privileges.drop_to's changes, for the child only)."""
        self.env = env
        self.port = port
        self.run_dir = run_dir
        config = run_dir / "mms.properties"
        config.write_text(mms_config(env, self.port))
        as_user = {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        child_env = {
            **os.environ,
            **({} if user is None else user_environment(user, run_dir)),
            # MMS keeps its pid file (TMPDIR) and worker sockets (TEMP) in the temp dir: one per server
            "TMPDIR": str(run_dir),
            "TEMP": str(run_dir),
            "LOG_LOCATION": str(run_dir / "logs"),
            "METRICS_LOCATION": str(run_dir / "logs"),
            SPOOL_DIR_ENV: str(run_dir / "spool"),
            # one torch thread layout for every library the workers load
            "OMP_NUM_THREADS": str(env.torch_threads),
            # idle OpenMP threads sleep instead of spinning: spinning threads that lose their core
            # to another process (decoding, the JVM, a neighbour) stall every parallel region
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        }
        cmd = [sys.executable, "-m", "mms.model_server", "--start", "--foreground", "--mms-config", str(config),
               "--model-store", "/", "--log-config", str(MMS_LOG_CONFIG)]
        log.info("starting multi-model-server on 127.0.0.1:%d: %s", self.port, " ".join(cmd))
        self.process = subprocess.Popen(cmd, env=child_env, cwd=run_dir, start_new_session=True, **as_user)

    def wait_until_answering(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"multi-model-server exited with code {self.process.returncode}")
            try:
                request(self.port, "GET", "/ping", timeout=2)
                return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"multi-model-server did not answer within {timeout:.0f} s")

    def register(self, model_dir: Path, timeout: float) -> None:
        """Load the single model with its workers; returns once they hold it."""
        query = urlencode({"url": str(model_dir.resolve()), "model_name": MODEL_NAME, "synchronous": "true",
                           **register_defaults(self.env)})
        status, body = request(self.port, "POST", f"/models?{query}", timeout=timeout)
        if status != 200:
            raise RuntimeError(f"multi-model-server could not load {model_dir}: {status} {body.decode(errors='replace')}")

    def stop(self) -> int:
        """SIGTERM to the whole group (the launcher, the JVM, the Python workers), SIGKILL after a grace period."""
        for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 3)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        return self.process.wait()
