"""`docker run IMAGE serve` for the benchmarks: start it on a free loopback port, wait for its first
200 on /ping, ask it for top-1 labels, read its log, remove it."""
from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import requests


class ServingContainer:
    """`env`: NAME=VALUE settings for the container. Use as a context manager, or call `stop`."""

    def __init__(self, image: str, model_dir: Path, env=()):
        self.image, self.name = image, f"imgclf-bench-{uuid.uuid4().hex[:8]}"
        settings = [arg for pair in env for arg in ("-e", pair)]
        self.started = time.monotonic()
        subprocess.run(["docker", "run", "-d", "--name", self.name, "-p", "127.0.0.1::8080", *settings,
                        "-v", f"{Path(model_dir).resolve()}:/opt/ml/model:ro", image, "serve"],
                       check=True, capture_output=True)
        self.port = int(self.docker("port", self.name, "8080/tcp").split(":")[-1])
        self.pid = int(self.docker("inspect", "-f", "{{.State.Pid}}", self.name))
        self.url = f"http://127.0.0.1:{self.port}"

    @staticmethod
    def docker(*args: str) -> str:
        return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout.strip()

    def wait(self, timeout: float = 300) -> float:
        """Seconds from `docker run` to the first 200 on /ping."""
        while time.monotonic() - self.started < timeout:
            try:
                if requests.get(f"{self.url}/ping", timeout=5).status_code == 200:
                    return time.monotonic() - self.started
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"{self.image}: no 200 on /ping within {timeout:g} s:\n{self.logs()[-3000:]}")

    def top1(self, bodies: list[bytes]) -> list[str]:
        """The top label of each JPEG, one request each."""
        labels = []
        for body in bodies:
            r = requests.post(f"{self.url}/invocations", data=body, headers={"Content-Type": "image/jpeg"},
                              timeout=300)
            r.raise_for_status()
            labels.append(r.json()["predictions"][0][0]["label"])
        return labels

    def logs(self) -> str:
        out = subprocess.run(["docker", "logs", self.name], capture_output=True, text=True)
        return out.stdout + out.stderr

    def log_line(self, text: str) -> str:
        """The first line of the log that holds `text`."""
        return next((line.strip() for line in self.logs().splitlines() if text in line), "(not logged)")

    def stop(self) -> None:
        subprocess.run(["docker", "rm", "-f", self.name], capture_output=True)

    def __enter__(self) -> ServingContainer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
