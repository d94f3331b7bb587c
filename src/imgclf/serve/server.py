"""`imgclf-serve`: the endpoint's server process (what `docker run IMAGE serve` runs).

In a container it takes no arguments: everything comes from the SAGEMAKER_* variables that
sagemaker-inference defines and our IMGCLF_* ones (environment.py). Outside a container the
flags set the same variables: `imgclf-serve --model-dir ./model --port 8080`.

Started as root (as SageMaker starts it), it copies the model and drops to an unprivileged user
(privileges.py). It starts multi-model-server first, in the foreground on a private port and as
that user: its JVM takes seconds to start, and the model is copied and the front's modules are
imported meanwhile. Then it registers
the model with server-side batching (MMS's start-up models get a batch size of 1), and serves the
public port through `front.Front` (aiohttp). SIGTERM stops listening, lets the requests in flight
finish, then stops the model server's whole process group, workers included, all within
SageMaker's 30 s.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import logging
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import sagemaker_inference
from sagemaker_inference import parameters as sm

from ..archive import UnsafeArchive, packed_model
from ..names import CARD_FILE
from . import environment as E
from .environment import IN_MEMORY_BYTES, MODEL_NAME, MiB, SETTINGS, ServingEnvironment
from .spool import SPOOL_DIR_ENV
from .privileges import DEFAULT_USER, SERVE_USER_ENV, drop_to, give, serving_user, stage_model, user_environment

log = logging.getLogger("imgclf.serve")

HANDLER_SERVICE = "imgclf.serve.mms_entry:handle"  # handler_service.HandlerService, its answers padded (mms_entry.py)
MMS_LOG_CONFIG = Path(sagemaker_inference.__file__).parent / "etc" / "log4j2.xml"
# SageMaker sends SIGKILL 30 s after SIGTERM: requests in flight get DRAIN_S to finish, then the
# model server STOP_GRACE_S to exit, then it is killed.
DRAIN_S = 15
STOP_GRACE_S = 8


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


def start_up(server: ModelServer, front: Front, env: ServingEnvironment, model_dir: Path,
             failed: threading.Event) -> None:
    """Background start-up: register the single model, then let /ping say healthy. A model that
    cannot be loaded ends the process (SageMaker then reports the endpoint as failed)."""
    try:
        server.wait_until_answering(env.startup_timeout_s)
        if not env.multi_model:
            server.register(model_dir, env.startup_timeout_s)
            front.model_ready.set()
        log.info("ready on port %d", env.port)
    except Exception as e:
        log.error("start-up failed: %s", e)
        failed.set()


def prepare(env: ServingEnvironment, run_dir: Path, user: pwd.struct_passwd | None) -> Path:
    """As root: copy the model into `run_dir` and become the serving user. Returns the model
    folder to serve."""
    if user is None:
        return env.model_dir
    model_dir = env.model_dir if env.multi_model else stage_model(env.model_dir, run_dir / "model")
    give(run_dir, user)
    drop_to(user, run_dir)
    return model_dir


async def serve(env: ServingEnvironment, host: str, server: ModelServer, model_dir: Path, run_dir: Path) -> int:
    """The front on the public port and `server` behind it, until SIGTERM or a failure."""
    from .front import Front  # aiohttp: imported while the model server starts (the module's docstring)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    front = Front(server.port, multi_model=env.multi_model, max_payload_bytes=env.max_payload_bytes,
                  register_defaults=register_defaults(env) if env.multi_model else None,
                  models_dir=env.models_dir if env.multi_model else None, stage_dir=run_dir / "models",
                  upstream_timeout_s=env.response_timeout_s, stop_grace_s=DRAIN_S, spool_dir=run_dir / "spool")
    await front.start(host, env.port)
    failed = threading.Event()
    threading.Thread(target=start_up, args=(server, front, env, model_dir, failed), name="start-up",
                     daemon=True).start()
    log.info("serving %s on %s:%d; %s", env.models_dir if env.multi_model else model_dir, host, env.port,
             env.describe())
    while not (stop.is_set() or failed.is_set() or server.process.poll() is not None):
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
    if stop.is_set():
        log.info("SIGTERM: answering the requests in flight (up to %d s), then stopping", DRAIN_S)
    await front.stop()
    code = await asyncio.to_thread(server.stop)
    if stop.is_set() and not failed.is_set():
        log.info("stopped")
        return 0
    log.error("stopped: %s", "start-up failed" if failed.is_set() else f"multi-model-server exited with code {code}")
    return 1


def main(env: ServingEnvironment, host: str = "0.0.0.0", user: str | None = None) -> int:
    """Serve until SIGTERM (exit 0) or until the model server fails (exit 1)."""
    if not shutil.which("java") and not os.environ.get("JAVA_HOME"):
        log.error("multi-model-server needs a Java runtime (java not found on PATH)")
        return 1
    if not env.multi_model and not ((env.model_dir / CARD_FILE).is_file() or packed_model(env.model_dir)):
        log.error("no model artifact in %s (set SM_MODEL_DIR or --model-dir)", env.model_dir)
        return 1
    run_dir = Path(tempfile.mkdtemp(prefix="imgclf-serve-"))
    server = None
    try:
        try:
            serving = serving_user(user)
            if serving is not None:
                give(run_dir, serving)
            server = ModelServer(env, run_dir, free_port(), user=serving)
            model_dir = prepare(env, run_dir, serving)
            from .runtime import unservable_reason  # numpy: imported while the model server starts

            if not env.multi_model and (reason := unservable_reason(model_dir)):  # e.g. no torch, no OpenVINO copy
                raise RuntimeError(reason)
        except (OSError, RuntimeError, UnsafeArchive) as e:
            log.error("cannot prepare the model for serving: %s", e)
            if server is not None:
                server.stop()
            return 1
        return asyncio.run(serve(env, host, server, model_dir, run_dir))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


SERVER_FLAGS = ("port", "profile", "workers", "torch_threads", "batch_size", "max_batch_delay_ms", "top_k",
                "precision", "max_payload_mb", "response_timeout_s")  # each sets its variable, which the workers see


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", help=f"model artifact (default ${E.MODEL_DIR_ENV} or /opt/ml/model)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on")
    p.add_argument("--multi-model", action="store_true", help=f"multi-model endpoint (default ${sm.MULTI_MODEL_ENV})")
    for name in SERVER_FLAGS:
        setting = SETTINGS[name]
        p.add_argument(f"--{name.replace('_', '-')}", type=setting.kind, choices=setting.choices or None,
                       help=setting.describe())
    p.add_argument("--user", help=f"started as root, serve as this user (default ${SERVE_USER_ENV} or {DEFAULT_USER}; "
                                  "root keeps root)")
    return p


def cli(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    args = get_args_parser().parse_args(argv)
    if args.model_dir:
        os.environ[E.MODEL_DIR_ENV] = args.model_dir
    os.environ.update({SETTINGS[n].var: str(v) for n in SERVER_FLAGS if (v := getattr(args, n)) is not None})
    if args.multi_model:
        os.environ[sm.MULTI_MODEL_ENV] = "true"
    try:
        env = ServingEnvironment.from_env()
    except ValueError as e:
        sys.exit(f"imgclf-serve: {e}")
    sys.exit(main(env, host=args.host, user=args.user or os.environ.get(SERVE_USER_ENV)))


if __name__ == "__main__":
    cli()
