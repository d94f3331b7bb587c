"""`imgclf-serve`: the endpoint's server process (what `docker run IMAGE serve` runs).

In a container it takes no arguments: everything comes from the SAGEMAKER_* variables that
sagemaker-inference defines and our IMGCLF_* ones (environment.py). Outside a container the
flags set the same variables: `imgclf-serve --model-dir ./model --port 8080`.

Started as root (as SageMaker starts it), it copies the model and drops to an unprivileged user
(privileges.py). It starts multi-model-server (model_server.py) first, as that user: its JVM takes
seconds to start, and the model is copied and the front's modules are imported meanwhile. Then it
registers the model with server-side batching (MMS's start-up models get a batch size of 1), and
serves the public port through `front.Front` (aiohttp). SIGTERM stops listening, lets the requests
in flight finish, then stops the model server's whole process group, workers included, all within
SageMaker's 30 s.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import pwd
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from sagemaker_inference import parameters as sm

from ..artifact.archive import UnsafeArchive, packed_model
from ..commandline import ArgumentParser, add_verbose, user_errors
from ..names import CARD_FILE, LOG_FORMAT, SAGEMAKER_BASE_DIR, UserError
from . import environment as E
from .environment import SETTINGS, ServingEnvironment
from .model_server import ModelServer, free_port, register_defaults
from .privileges import DEFAULT_USER, SERVE_USER_ENV, drop_to, give, serving_user, stage_model

if TYPE_CHECKING:
    from .front import Front

log = logging.getLogger("imgclf.serve")

# SageMaker sends SIGKILL 30 s after SIGTERM: requests in flight get DRAIN_S to finish, then
# multi-model-server gets model_server.STOP_GRACE_S to exit, then it is killed.
DRAIN_S = 15


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
    model_dir = env.model_dir
    if not env.multi_model:
        model_dir = stage_model(env.model_dir, run_dir / "model")
        # the copy alone: run_dir is the user's already, and multi-model-server, started, creates and
        # removes temporary files in it (walking it could meet one that is gone)
        give(model_dir, user)
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
    """Serve until SIGTERM (exit 0) or until the model server fails (exit 1); a UserError when it
    cannot start (no Java, no model)."""
    if not env.multi_model and not ((env.model_dir / CARD_FILE).is_file() or packed_model(env.model_dir)):
        raise UserError(f"no model artifact in {env.model_dir}: give --model-dir or set ${E.MODEL_DIR_ENV}")
    if not shutil.which("java") and not os.environ.get("JAVA_HOME"):
        raise UserError("multi-model-server needs a Java runtime: install one (JRE 17) or set $JAVA_HOME")
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
    p = ArgumentParser(prog="imgclf-serve", description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", help=f"model artifact (default: ${E.MODEL_DIR_ENV} or {SAGEMAKER_BASE_DIR}/model)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0, every interface)")
    p.add_argument("--multi-model", action="store_true",
                   help=f"multi-model endpoint (default: ${sm.MULTI_MODEL_ENV}, else one model)")
    for name in SERVER_FLAGS:
        setting = SETTINGS[name]
        p.add_argument(f"--{name.replace('_', '-')}", type=setting.kind, choices=setting.choices or None,
                       help=setting.describe())
    p.add_argument("--user", help=f"started as root, serve as this user (default: ${SERVE_USER_ENV} or {DEFAULT_USER}; "
                                  "root keeps root)")
    add_verbose(p)
    return p


def cli(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stdout)
    args = get_args_parser().parse_args(argv)
    if args.model_dir:
        os.environ[E.MODEL_DIR_ENV] = args.model_dir
    os.environ.update({SETTINGS[n].var: str(v) for n in SERVER_FLAGS if (v := getattr(args, n)) is not None})
    if args.multi_model:
        os.environ[sm.MULTI_MODEL_ENV] = "true"
    with user_errors("imgclf-serve", args.verbose, kinds=(ValueError,)):  # a bad setting names itself
        env = ServingEnvironment.from_env()
    with user_errors("imgclf-serve", args.verbose):
        code = main(env, host=args.host, user=args.user or os.environ.get(SERVE_USER_ENV))
    sys.exit(code)


if __name__ == "__main__":
    cli()
