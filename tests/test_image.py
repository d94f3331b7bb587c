"""End-to-end tests of the image through `docker run`, the way SageMaker starts it.

`docker run IMAGE train` on an /opt/ml tree, `docker run IMAGE serve` on the model it wrote, a
broken job, and `docker stop` (SIGTERM, as on a spot interruption) during training followed by a
rerun that resumes. The image is built once per session (the `docker_image` fixture); the jobs are
tiny: resnet18 from random weights on 32-pixel images. Last, the build step that bakes in
ImageNet weights (docker/fetch_weights.py), run here without Docker.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests
import torch
import torchvision
from conftest import ROOT, free_port, load_artifact, make_image_folder

from imgclf.artifact.network import create_model
from imgclf.train.backbone import find_imagenet_weights, load_backbone

CLASSES = ["blue", "green", "red"]
TINY_JOB = {"arch": "resnet18", "pretrained": "false", "epochs": "1", "image-size": "32", "batch-size": "8",
            "num-workers": "0"}
CHECKPOINT = "/opt/ml/checkpoints/checkpoint.pt"
START_TIMEOUT_S = 180


def job_dir(root: Path, hyperparameters: dict, channels=("training", "validation")) -> Path:
    """The /opt/ml tree of a training job as SageMaker lays it out: config files and channels."""
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
    (config / "inputdataconfig.json").write_text(json.dumps({c: {"TrainingInputMode": "File"} for c in channels}))
    for seed, channel in enumerate(channels):
        make_image_folder(root / "input" / "data" / channel, per_class=6, size=(40, 40), seed=seed)
    return root


def run_image(image: str, ml: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`docker run IMAGE ARGS` with `ml` as /opt/ml; output captured."""
    cmd = ["docker", "run", "--rm", "-v", f"{ml}:/opt/ml", image, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def container_running(name: str) -> bool:
    out = subprocess.run(["docker", "container", "inspect", "-f", "{{.State.Running}}", name],
                         capture_output=True, text=True)
    return out.stdout.strip() == "true"


def exit_code(name: str) -> int:
    out = subprocess.run(["docker", "container", "inspect", "-f", "{{.State.ExitCode}}", name],
                         capture_output=True, text=True, check=True)
    return int(out.stdout)


@pytest.fixture
def container_name():
    """A unique container name, and the container removed afterwards whatever happened."""
    name = f"imgclf-test-{uuid.uuid4().hex[:8]}"
    yield name
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)


@pytest.fixture(scope="module")
def trained(docker_image, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A tiny training job run by the image: its /opt/ml tree and the finished process."""
    ml = job_dir(tmp_path_factory.mktemp("ml"), TINY_JOB, channels=("training", "validation", "test"))
    return ml, run_image(docker_image, ml, "train")


@pytest.mark.docker
def test_train_writes_model_artifact(trained):
    ml, proc = trained
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "epoch=1 " in proc.stdout and "valid_acc=" in proc.stdout and "test_acc=" in proc.stdout
    model, card = load_artifact(ml / "model")  # written in the image, read here: one format
    assert card.arch == "resnet18" and list(card.classes) == CLASSES
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, len(CLASSES))
    assert not (ml / "output" / "failure").exists()
    assert [m["epoch"] for m in json.loads((ml / "output" / "data" / "metrics.json").read_text()) if "epoch" in m] == [1]


@pytest.mark.docker
@pytest.mark.parametrize("hyperparameters, channels, reason", [
    ({**TINY_JOB, "epoch": "3"}, ("training",), "ClientError: unknown hyperparameters: epoch"),
    (TINY_JOB, ("validation",), "ClientError: no training channel"),
])
def test_broken_job_writes_failure_file(docker_image, tmp_path, hyperparameters, channels, reason):
    ml = job_dir(tmp_path, hyperparameters, channels=channels)
    proc = run_image(docker_image, ml, "train")
    assert proc.returncode != 0
    assert (ml / "output" / "failure").read_text().startswith(reason)
    assert not (ml / "model" / "model.pt").exists()


@pytest.mark.docker
def test_sigterm_checkpoints_and_rerun_resumes(docker_image, tmp_path, container_name):
    ml = job_dir(tmp_path, {**TINY_JOB, "epochs": "1000"})
    checkpoint = ml / "checkpoints" / "checkpoint.pt"
    job = subprocess.Popen(["docker", "run", "--name", container_name, "-v", f"{ml}:/opt/ml", docker_image, "train"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not checkpoint.exists() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert checkpoint.exists(), "no checkpoint after the first epoch"
        # `docker stop` sends SIGTERM, then SIGKILL after the grace period, as SageMaker does
        subprocess.run(["docker", "stop", "-t", "60", container_name], check=True, capture_output=True)
        log = job.communicate(timeout=120)[0]
    finally:
        job.kill()
    assert exit_code(container_name) == 128 + 15, log[-3000:]  # stopped by SIGTERM, not killed
    assert "stopped by SIGTERM" in log
    epochs_done = torch.load(checkpoint, weights_only=True)["state"]["epoch"]
    assert 1 <= epochs_done < 1000
    assert not (ml / "model" / "model.pt").exists()

    (ml / "input" / "config" / "hyperparameters.json").write_text(json.dumps({**TINY_JOB, "epochs": str(epochs_done + 1)}))
    proc = run_image(docker_image, ml, "train")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"resumed from {CHECKPOINT} after epoch {epochs_done}" in proc.stdout
    history = json.loads((ml / "output" / "data" / "metrics.json").read_text())
    assert [m["epoch"] for m in history] == list(range(1, epochs_done + 2))
    assert (ml / "model" / "model.pt").exists()


def wait_for_ping(url: str, name: str) -> requests.Response:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            response = requests.get(url, timeout=2)
            if response.status_code == 200:
                return response
        except requests.ConnectionError:
            pass
        if not container_running(name):
            logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
            pytest.fail(f"the server exited:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"no 200 on {url} within {START_TIMEOUT_S} s")


@pytest.mark.docker
@pytest.mark.parametrize("bind_to_port", [None, 8081], ids=["port-8080", "SAGEMAKER_BIND_TO_PORT"])
def test_serve_answers_predictions(docker_image, trained, container_name, bind_to_port):
    ml, proc = trained
    assert proc.returncode == 0
    port = free_port()
    # the image's accept-bind-to-port label promises that the server listens where this variable says
    env = ["-e", f"SAGEMAKER_BIND_TO_PORT={bind_to_port}"] if bind_to_port else []
    subprocess.run(["docker", "run", "-d", "--name", container_name, "-p", f"127.0.0.1:{port}:{bind_to_port or 8080}",
                    *env, "-v", f"{ml / 'model'}:/opt/ml/model", docker_image, "serve"], check=True, capture_output=True)
    base = f"http://127.0.0.1:{port}"
    wait_for_ping(f"{base}/ping", container_name)

    image = next((ml / "input" / "data" / "test" / "red").glob("*.jpg")).read_bytes()
    response = requests.post(f"{base}/invocations", data=image, headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 1
    assert {p["label"] for p in predictions[0]} == set(CLASSES)
    assert sum(p["probability"] for p in predictions[0]) == pytest.approx(1, abs=1e-3)

    refused = requests.post(f"{base}/invocations", data=b"hello", headers={"Content-Type": "text/plain"}, timeout=60)
    assert refused.status_code == 415 and "message" in refused.json()
    again = requests.post(f"{base}/invocations", data=image, headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert again.status_code == 200, "the worker did not survive a refused request"

    subprocess.run(["docker", "stop", "-t", "60", container_name], check=True, capture_output=True)
    assert exit_code(container_name) == 0, "the server did not stop cleanly on SIGTERM"


@pytest.mark.docker
def test_image_metadata_and_contents(docker_image):
    config = json.loads(subprocess.run(["docker", "image", "inspect", docker_image], capture_output=True, text=True,
                                       check=True).stdout)[0]["Config"]
    assert config["Labels"]["com.amazonaws.sagemaker.capabilities.multi-models"] == "true"
    assert config["Labels"]["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    assert config["User"] in ("", "root", "0")  # SageMaker local mode mounts root-only folders
    # nothing of the build machine (a package index that may hold a token) stays in the image
    history = subprocess.run(["docker", "history", "--no-trunc", docker_image], capture_output=True, text=True,
                             check=True).stdout
    for arg in shlex.split(os.environ.get("DOCKER_BUILD_ARGS", "")):
        if arg.startswith("PIP_"):
            value = arg.split("=", 1)[1]
            assert value not in history and value not in json.dumps(config["Env"])
    # no caches, sources or build leftovers; the tools SageMaker's jobs need are there
    check = ("test ! -e /root/.cache && test ! -e /tmp/imgclf && test -z \"$(ls /var/lib/apt/lists | grep -v lock)\""
             " && test -d /opt/weights && java -version 2>/dev/null && command -v imgclf-train imgclf-serve"
             " && python -c 'import imgclf.serve.server, sagemaker_inference, smdebug, sagemaker_training'")
    proc = subprocess.run(["docker", "run", "--rm", docker_image, "sh", "-c", check], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.docker
def test_entry_without_command_prints_usage(docker_image):
    proc = subprocess.run(["docker", "run", "--rm", docker_image], capture_output=True, text=True)
    assert proc.returncode != 0 and "train|serve" in proc.stderr


def test_fetch_weights_saves_what_training_finds(tmp_path, monkeypatch):
    """docker/fetch_weights.py (--build-arg PRETRAINED_ARCHS) writes torchvision's ImageNet weights
    where training looks for them. torchvision's download cache is filled first: nothing is downloaded."""
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    imagenet = torchvision.models.resnet18().state_dict()  # stands in for the downloaded file
    torch.save(imagenet, cache / Path(urlparse(weights.url).path).name)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "TORCH_HOME": str(tmp_path / "torch")}
    fetch = [sys.executable, str(ROOT / "docker" / "fetch_weights.py"), str(tmp_path / "weights")]
    proc = subprocess.run(fetch + ["resnet18"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr

    monkeypatch.setenv("IMGCLF_WEIGHTS_DIR", str(tmp_path / "weights"))
    found = find_imagenet_weights("resnet18", None)
    assert found == tmp_path / "weights" / "resnet18.pth"
    model = create_model("resnet18", len(CLASSES))
    load_backbone(model, found)
    assert torch.equal(model.conv1.weight, imagenet["conv1.weight"])

    unknown = subprocess.run(fetch + ["efficientnet_lite0"], env=env, capture_output=True, text=True)
    assert unknown.returncode != 0 and "PRETRAINED_ARCHS" in unknown.stderr
