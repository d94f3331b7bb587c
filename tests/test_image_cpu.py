"""The slim CPU serving image (`--build-arg VARIANT=cpu`) through `docker run`, beside the full one:
nothing of torch or CUDA in it, `train` refused with a pointer to the full image, an artifact
without the OpenVINO copies refused until the full image's `imgclf-export` adds them, and the
same top-1 as the full image (and as torch) on 20 real photos, with an artifact that imgclf-train
wrote (efficientnet_lite0 fine-tuned on the bundled Fashion-MNIST sample)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from conftest import ROOT, free_port
from test_image import container_running, job_dir, run_image, wait_for_ping

from imgclf.artifact.card import load_card

sys.path.insert(0, str(ROOT / "bench"))
from serve_finetuned import PHOTOS, SAMPLE  # noqa: E402
from serve_finetuned import own_top1 as torch_top1  # noqa: E402  the float32 torch network: the reference

MAX_CPU_IMAGE_BYTES = 1.5e9
EXPORT_HINT = "imgclf-export MODEL_DIR"

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """An artifact as imgclf-train writes it (run here, in this venv), OpenVINO copies included."""
    out = tmp_path_factory.mktemp("train")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "SM_CHANNEL_TRAINING": str(SAMPLE / "training"),
           "SM_CHANNEL_VALIDATION": str(SAMPLE / "test"), "SM_MODEL_DIR": str(out / "model"),
           "SM_OUTPUT_DIR": str(out / "output"), "SM_OUTPUT_DATA_DIR": str(out / "output" / "data"),
           "SM_CHECKPOINT_DIR": str(out / "checkpoints")}
    proc = subprocess.run([sys.executable, "-m", "imgclf.train.job", "--arch", "efficientnet_lite0", "--epochs", "2",
                           "--image-size", "96", "--batch-size", "16", "--num-workers", "0"],
                          env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {"openvino_fp32", "openvino_int8"} <= set(load_card(out / "model").formats)
    return out / "model"


@contextmanager
def serving(image: str, model_dir: Path, *env: str):
    """`docker run IMAGE serve` on `model_dir`; yields the base URL once /ping is 200."""
    name, port = f"imgclf-test-{uuid.uuid4().hex[:8]}", free_port()
    flags = [f for var in env for f in ("-e", var)]
    subprocess.run(["docker", "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080", *flags,
                    "-v", f"{model_dir}:/opt/ml/model", image, "serve"], check=True, capture_output=True)
    try:
        wait_for_ping(f"http://127.0.0.1:{port}/ping", name)
        yield f"http://127.0.0.1:{port}"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def served_top1(url: str) -> list[str]:
    labels = []
    for path in PHOTOS:
        r = requests.post(f"{url}/invocations", data=path.read_bytes(), headers={"Content-Type": "image/jpeg"},
                          timeout=60)
        assert r.status_code == 200, r.text
        labels.append(r.json()["predictions"][0][0]["label"])
    return labels


def test_cpu_image_has_no_torch_and_no_cuda(docker_image_cpu):
    size = int(subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", docker_image_cpu], capture_output=True,
                              text=True, check=True).stdout)
    assert size <= MAX_CPU_IMAGE_BYTES, f"{size / 1e9:.2f} GB"
    listing = ("pip list --format=freeze && find / -xdev -regex '.*/lib\\(cuda\\|cudart\\|cublas\\|cudnn\\|cufft\\|"
               "curand\\|cusolver\\|cusparse\\|cupti\\|nvrtc\\|nccl\\|nvJitLink\\)[^/]*\\.so[^/]*' -print"
               " && python -c 'import imgclf.serve.server, "
               "imgclf.serve.mms_entry, sys; assert not [m for m in sys.modules if m.startswith((\"torch\", \"nncf\"))]'")
    proc = subprocess.run(["docker", "run", "--rm", docker_image_cpu, "sh", "-c", listing], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    packages = {line.split("==")[0].lower() for line in proc.stdout.splitlines() if "==" in line}
    assert {"openvino", "numpy", "multi-model-server", "sagemaker-inference"} <= packages
    assert not {p for p in packages if p.startswith(("torch", "nvidia", "triton", "smdebug", "nncf"))}
    assert not [line for line in proc.stdout.splitlines() if line.startswith("/")], "CUDA libraries in the image"


def test_train_in_the_cpu_image_says_to_use_the_full_image(docker_image_cpu, tmp_path):
    ml = job_dir(tmp_path, {"epochs": "1"})
    proc = run_image(docker_image_cpu, ml, "train")
    assert proc.returncode != 0
    assert "Train with the full image" in proc.stderr
    assert "Train with the full image" in (ml / "output" / "failure").read_text()


def test_cpu_image_answers_as_the_full_image_and_torch_on_20_photos(docker_image, docker_image_cpu, trained):
    assert len(PHOTOS) == 20
    with serving(docker_image, trained) as url:
        full = served_top1(url)
    with serving(docker_image_cpu, trained) as url:
        cpu = served_top1(url)
    assert cpu == full
    with serving(docker_image_cpu, trained, "IMGCLF_PRECISION=fp32") as url:
        assert served_top1(url) == torch_top1(trained)  # OpenVINO float32 and numpy pixels: torch's answers
    truth = [p.parent.name for p in PHOTOS]
    assert sum(a == b for a, b in zip(cpu, truth)) >= 16  # a real model: most answers right


def test_an_artifact_without_openvino_copies_is_refused_until_exported(docker_image, docker_image_cpu, trained,
                                                                      tmp_path):
    bare = tmp_path / "model"
    bare.mkdir()
    shutil.copy(trained / "model.pt", bare)
    card = json.loads((trained / "model.json").read_text())
    (bare / "model.json").write_text(json.dumps({**card, "formats": {}}))
    name = f"imgclf-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "run", "-d", "--name", name, "-v", f"{bare}:/opt/ml/model", docker_image_cpu, "serve"],
                   check=True, capture_output=True)
    try:
        deadline = time.monotonic() + 120
        while container_running(name) and time.monotonic() < deadline:
            time.sleep(0.5)
        state = subprocess.run(["docker", "inspect", "-f", "{{.State.ExitCode}}", name], capture_output=True,
                               text=True, check=True).stdout.strip()
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    assert state not in ("", "0"), "the server kept running on an artifact it cannot serve"
    assert EXPORT_HINT in logs.stdout + logs.stderr

    export = subprocess.run(["docker", "run", "--rm", "-v", f"{bare}:/opt/ml/model", docker_image, "imgclf-export",
                             "/opt/ml/model"], capture_output=True, text=True, timeout=600)
    assert export.returncode == 0, export.stdout[-3000:] + export.stderr[-3000:]
    assert "openvino_fp32" in load_card(bare).formats
    with serving(docker_image_cpu, bare) as url:
        assert served_top1(url) == torch_top1(trained)
