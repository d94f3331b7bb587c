"""The image's security properties, through `docker run` as SageMaker starts it: `serve` drops
root once it has read the model (checked with `docker top`), nothing of the build's package index
or any credential stays in the image, and a training job that cannot write its model or
checkpoint (a full disk, a read-only folder) says why in the failure file."""
from __future__ import annotations

import subprocess
import time
import uuid

import pytest
import requests
from conftest import free_port
from serve_support import jpeg, make_artifact
from test_image import TINY_JOB, job_dir

pytestmark = pytest.mark.docker


@pytest.fixture
def container_name():
    name = f"imgclf-sec-{uuid.uuid4().hex[:8]}"
    yield name
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check)


def test_serve_drops_root_after_reading_a_root_only_model(docker_image, tmp_path, container_name):
    ml = tmp_path / "ml"
    make_artifact(ml / "model")
    ml.chmod(0o700)  # as SageMaker local mode mounts it: root's, no one else's
    (ml / "model").chmod(0o700)
    port = free_port()
    docker("run", "-d", "--name", container_name, "-p", f"127.0.0.1:{port}:8080", "-v", f"{ml}:/opt/ml",
           docker_image, "serve")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if requests.get(url + "/ping", timeout=5).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, docker("logs", container_name).stdout[-3000:]
        time.sleep(0.5)
    r = requests.post(url + "/invocations", data=jpeg(), headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert r.status_code == 200 and r.json()["predictions"]

    uid = docker("exec", container_name, "id", "-u", "imgclf").stdout.strip()
    top = docker("top", container_name, "-eo", "uid,pid,args").stdout.splitlines()[1:]
    assert uid != "0" and {line.split()[0] for line in top} == {uid}, "\n".join(top)  # server, JVM, workers
    assert any("model_service_worker" in line for line in top) and any("java" in line for line in top)
    logs = docker("logs", container_name).stdout
    assert "serving as imgclf" in logs

    start = time.monotonic()
    docker("stop", "-t", "30", container_name)  # SIGTERM, then SIGKILL after SageMaker's 30 s
    assert time.monotonic() - start < 30
    assert docker("inspect", "-f", "{{.State.ExitCode}}", container_name).stdout.strip() == "0"


def test_no_index_or_credentials_left_in_the_image(docker_image):
    probe = ("env; for f in /root/.aws /root/.netrc /root/.docker /root/.pip /root/.config/pip /etc/pip.conf "
             "/opt/venv/pip.conf /root/.cache/pip; do [ -e $f ] && echo FOUND $f; done; true")
    out = docker("run", "--rm", "--entrypoint", "sh", docker_image, "-c", probe).stdout
    assert "FOUND" not in out, out
    for word in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PIP_EXTRA_INDEX_URL",
                 "PIP_INDEX_URL", "PIP_TRUSTED_HOST"):
        assert word not in out
    history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", docker_image).stdout
    assert "PIP_EXTRA_INDEX_URL=" not in history and "PIP_TRUSTED_HOST=" not in history


@pytest.mark.parametrize("mount, reason", [
    ("--tmpfs=/opt/ml/model:size=1m", "DiskFullError: "),
    ("--tmpfs=/opt/ml/checkpoints:size=1m", "DiskFullError: writing /opt/ml/checkpoints/checkpoint.tmp (No space"),
    ("READ_ONLY_MODEL", "PermissionError: "),
], ids=["model-disk-full", "checkpoint-disk-full", "model-dir-read-only"])
def test_a_job_that_cannot_write_says_why_in_the_failure_file(docker_image, tmp_path, mount, reason):
    ml = job_dir(tmp_path / "ml", TINY_JOB)
    if mount == "READ_ONLY_MODEL":
        (tmp_path / "model").mkdir()
        mount = f"--volume={tmp_path / 'model'}:/opt/ml/model:ro"
    proc = subprocess.run(["docker", "run", "--rm", "-v", f"{ml}:/opt/ml", mount, docker_image, "train"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:]
    failure = (ml / "output" / "failure").read_text()
    assert failure.startswith(reason), failure
    assert "Traceback" not in failure
