"""The image under network isolation (`--network-isolation`: SageMaker gives the container no
network), tried with `docker run --network none`: a training job whose backbone weights come from the
pretrained channel, told to log to an MLflow server it cannot reach, trains, says so in one line and
keeps its feature cache in the warm pool's cache directory, which the next job reuses; then the
server answers from inside its own container. The image is the session's (`docker_image`)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import make_image_folder
from test_image import CLASSES, container_name, exit_code  # noqa: F401 (container_name: a fixture)

from imgclf.train.contract import WARM_POOL_CACHE_ENV

WARM_POOL_CACHE = "/opt/ml/sagemaker/warmpoolcache"  # where SageMaker mounts it
JOB = {"arch": "resnet18", "pretrained": "true", "recipe": "linear", "features": "true", "epochs": "1",
       "image-size": "32", "batch-size": "8", "num-workers": "0", "serving-formats": "false"}
MLFLOW = "http://mlflow.internal:5000"  # a name that no network resolves


def isolated_job(root: Path, cache: Path, weights: Path) -> list[str]:
    """An /opt/ml tree with training, validation and pretrained channels, and its `docker run`
    options: no network, SageMaker's host name, the warm pool's cache, an MLflow server."""
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(JOB))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
    (config / "inputdataconfig.json").write_text(json.dumps(
        {c: {"TrainingInputMode": "File"} for c in ("training", "validation", "pretrained")}))
    for seed, channel in enumerate(("training", "validation")):
        make_image_folder(root / "input" / "data" / channel, per_class=6, size=(40, 40), seed=seed)
    pretrained = root / "input" / "data" / "pretrained"
    pretrained.mkdir()
    shutil.copy(weights, pretrained / "resnet18.pth")
    return ["--network", "none", "--hostname", "algo-1", "-v", f"{root}:/opt/ml", "-v", f"{cache}:{WARM_POOL_CACHE}",
            "-e", f"{WARM_POOL_CACHE_ENV}={WARM_POOL_CACHE}", "-e", f"MLFLOW_TRACKING_URI={MLFLOW}"]


@pytest.mark.docker
def test_training_and_serving_without_a_network(docker_image, tmp_path, container_name):
    cache = tmp_path / "warm-pool-cache"
    cache.mkdir()
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)  # stands in for ImageNet's
    logs = []
    for job in ("first", "second"):  # two jobs on one warm pool: the second finds the first's features
        options = isolated_job(tmp_path / job, cache, weights)
        proc = subprocess.run(["docker", "run", "--rm", *options, docker_image, "train"], capture_output=True,
                              text=True, timeout=600)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-3000:]
        assert "epoch=1 " in log and "loaded ImageNet weights from /opt/ml/input/data/pretrained/resnet18.pth" in log
        said = [line for line in log.splitlines() if "WARNING" in line and MLFLOW in line]
        assert len(said) == 1 and "training goes on" in said[0], log[-3000:]
        logs.append(log)
    assert "features: computing" in logs[0] and "features: reusing" in logs[1]
    assert (cache / "features" / "manifest.json").is_file()

    model = tmp_path / "second" / "model"
    subprocess.run(["docker", "run", "-d", "--name", container_name, "--network", "none",
                    "-v", f"{model}:/opt/ml/model", docker_image, "serve"], check=True, capture_output=True)
    image = next((tmp_path / "second" / "input" / "data" / "validation" / "red").glob("*.jpg"))
    subprocess.run(["docker", "cp", str(image), f"{container_name}:/tmp/red.jpg"], check=True, capture_output=True)
    # the only way in is from inside: the container has no interface but its loopback
    client = ("import json, time, urllib.request\n"
              "for _ in range(360):\n"
              "    try:\n"
              "        if urllib.request.urlopen('http://127.0.0.1:8080/ping', timeout=2).status == 200: break\n"
              "    except OSError: time.sleep(0.5)\n"
              "image = open('/tmp/red.jpg', 'rb').read()\n"
              "request = urllib.request.Request('http://127.0.0.1:8080/invocations', image,\n"
              "                                 {'Content-Type': 'image/jpeg'})\n"
              "print(urllib.request.urlopen(request, timeout=60).read().decode())\n")
    answer = subprocess.run(["docker", "exec", container_name, "python", "-c", client], capture_output=True,
                            text=True, timeout=300)
    assert answer.returncode == 0, answer.stderr[-3000:]
    (predictions,) = json.loads(answer.stdout)["predictions"]
    assert {p["label"] for p in predictions} == set(CLASSES)
    interfaces = subprocess.run(["docker", "exec", container_name, "ls", "/sys/class/net"], capture_output=True,
                                text=True, check=True).stdout.split()
    assert interfaces == ["lo"]
    subprocess.run(["docker", "stop", "-t", "60", container_name], check=True, capture_output=True)
    assert exit_code(container_name) == 0
