"""Helpers for the serving tests: tiny model artifacts, images, a mock MMS context, and a real
`imgclf-serve` process on 127.0.0.1."""
from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path

import requests
from conftest import free_port, require
from PIL import Image

from imgclf.artifact.card import ModelCard
from imgclf.artifact.images import EvalSettings
from imgclf.artifact.network import create_model, save_artifact

CLASSES = ("blue", "green", "red")


def make_artifact(model_dir: Path, classes=CLASSES, image_size: int = 32, arch: str = "resnet18", seed: int = 0) -> Path:
    """A model artifact as training writes it, with random weights (enough for serving)."""
    import torch

    torch.manual_seed(seed)
    save_artifact(model_dir, create_model(arch, len(classes)), ModelCard(arch, tuple(classes), EvalSettings.for_image_size(image_size)))
    return model_dir


def encode(img: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def jpeg(size=(64, 48), color=(220, 30, 30)) -> bytes:
    return encode(Image.new("RGB", size, color))


class MockContext:
    """What MMS hands a handler: system properties, request headers, per-request response status."""

    def __init__(self, model_dir: Path, headers: list[dict] | None = None):
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None, "batch_size": 8}
        self.headers = headers or []
        self.status: dict[int, tuple[int, str]] = {}
        self.content_types: dict[int, str] = {}

    def get_all_request_header(self, idx):
        return self.headers[idx]

    def get_request_id(self, idx=0):  # MMS's own id of each request of the batch
        return f"mms-{idx}"

    def set_response_status(self, code=200, phrase="", idx=0):
        self.status[idx] = (code, phrase)

    def set_response_content_type(self, idx, value):
        self.content_types[idx] = value


def require_mms() -> None:
    require(shutil.which("java") is not None and find_spec("mms") is not None,
            "multi-model-server and a Java runtime (JRE 17)")


class Server:
    """A running `imgclf-serve` on 127.0.0.1 with its log file."""

    def __init__(self, process: subprocess.Popen, port: int, log: Path):
        self.process, self.port, self.log = process, port, log
        self.url = f"http://127.0.0.1:{port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_healthy(self, timeout: float = 240) -> float:
        """Seconds until /ping said 200; fails with the log tail if it never does."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.process.poll() is not None:
                raise AssertionError(f"imgclf-serve exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
            try:
                if requests.get(self.url + "/ping", timeout=5).status_code == 200:
                    return time.monotonic() - start
            except requests.ConnectionError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"/ping not 200 after {timeout} s:\n{self.log_text()[-3000:]}")

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.wait()


@contextmanager
def serve(tmp: Path, args: list[str], env: dict[str, str] | None = None):
    """`imgclf-serve ARGS` in its own process group; stopped (and its group killed) on exit."""
    port = free_port()
    log = tmp / f"serve-{port}.log"
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "IMGCLF_", "SM_"))}
    child_env.update(env or {})
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "imgclf.serve.server", "--host", "127.0.0.1",
                                    "--port", str(port), *args], stdout=out, stderr=subprocess.STDOUT,
                                   env=child_env, start_new_session=True)
    server = Server(process, port, log)
    try:
        yield server
    finally:
        server.stop()
        try:  # the model server's processes are in the same group: none may outlive the test
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
