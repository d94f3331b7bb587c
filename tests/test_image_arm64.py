"""The CPU serving image built for linux/arm64 (Graviton) from the same Dockerfile, run here under
qemu emulation: /ping, an answer for each class equal to the x86 CPU image's, a hostile body
refused with a JSON 4xx, and int8 measured again at start-up with the ARM CPU's own kernels (the
artifact recorded x86 ones). Emulated: correctness only, never speed. Each step is bounded in time.

Needs qemu-user-static registered with binfmt_misc and an arm64 base: offline, BASE_IMAGE_ARM64
from `OFFLINE_ARM64=1 ../shared/ci/docker-offline.sh`; online, the Dockerfile's multi-arch default.
Not in the default run: `./tests/run.sh -m arm64` runs it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from conftest import COLORS, ROOT, docker_available, free_port, make_image_folder, require

from imgclf.artifact.card import load_card

# opt-in (pytest -m arm64): the arm64 base and image take most of an hour to build under emulation
pytestmark = [pytest.mark.docker, pytest.mark.arm64]

IMAGE_TAG = f"{os.environ.get('IMGCLF_TEST_IMAGE', 'imgclf:test')}-cpu-arm64"
MAX_CPU_IMAGE_BYTES = 1.5e9
BUILD_TIMEOUT_S = 1800  # about 10 minutes on 2 vCPUs, most of it apt and pip under emulation
START_TIMEOUT_S = 600  # the JVM and OpenVINO under emulation, and the int8 re-check
BINFMT = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")


@pytest.fixture(scope="module")
def docker_image_arm64() -> str:
    require(docker_available(), "no Docker engine")
    require(BINFMT.exists(), "no qemu-aarch64 in binfmt_misc (OFFLINE_ARM64=1 ../shared/ci/docker-offline.sh)")
    env = dict(os.environ)
    if env.get("BASE_IMAGE"):  # a local base is of one architecture: the arm64 build needs its own
        require(bool(env.get("BASE_IMAGE_ARM64")), "BASE_IMAGE without BASE_IMAGE_ARM64")
        env["BASE_IMAGE"] = env["BASE_IMAGE_ARM64"]
    subprocess.run([str(ROOT / "docker" / "build.sh"), IMAGE_TAG, "--platform", "linux/arm64", "--build-arg",
                    "VARIANT=cpu", "--build-arg", "PRETRAINED_ARCHS="], env=env, check=True, timeout=BUILD_TIMEOUT_S)
    return IMAGE_TAG


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """A small trained artifact with its OpenVINO copies (int8 measured with this x86 CPU's kernels),
    and one test image per class."""
    root = tmp_path_factory.mktemp("arm64")
    for split, n, seed in (("train", 16, 0), ("valid", 4, 1), ("test", 1, 2)):
        make_image_folder(root / "data" / split, per_class=n, seed=seed)
    hyperparameters = {"arch": "resnet18", "pretrained": "false", "image-size": "32", "batch-size": "8",
                       "epochs": "4", "num-workers": "0"}
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SM_")}, "PYTHONPATH": str(ROOT / "src"),
           "SAGEMAKER_BASE_DIR": str(root / "none"), "SM_MODEL_DIR": str(root / "model"),
           "SM_OUTPUT_DIR": str(root / "output"), "SM_OUTPUT_DATA_DIR": str(root / "output" / "data"),
           "SM_CHECKPOINT_DIR": str(root / "checkpoints"), "SM_HPS": json.dumps(hyperparameters),
           "SM_CHANNEL_TRAINING": str(root / "data" / "train"), "SM_CHANNEL_VALIDATION": str(root / "data" / "valid")}
    proc = subprocess.run([sys.executable, "-m", "imgclf.train.job"], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    int8 = load_card(root / "model").formats["openvino_int8"]
    assert "aarch64" not in int8.by_kernels
    return root / "model", {c: next((root / "data" / "test" / c).glob("*.jpg")) for c in COLORS}


@contextmanager
def serving(image: str, model_dir: Path):
    """`docker run IMAGE serve`; yields (base URL, seconds to the first 200 on /ping, container name)."""
    name, port = f"imgclf-test-{uuid.uuid4().hex[:8]}", free_port()
    start = time.monotonic()
    subprocess.run(["docker", "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080", "-v",
                    f"{model_dir}:/opt/ml/model", image, "serve"], check=True, capture_output=True)
    try:
        url = f"http://127.0.0.1:{port}"
        while True:
            try:
                if requests.get(f"{url}/ping", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            running = subprocess.run(["docker", "container", "inspect", "-f", "{{.State.Running}}", name],
                                     capture_output=True, text=True).stdout.strip()
            if running != "true" or time.monotonic() - start > START_TIMEOUT_S:
                pytest.fail(f"no 200 on /ping ({'exited' if running != 'true' else 'timed out'}):\n{logs(name)[-4000:]}")
            time.sleep(1)
        yield url, time.monotonic() - start, name
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def logs(name: str) -> str:
    proc = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
    return proc.stdout + proc.stderr


def answers(url: str, images: dict[str, Path]) -> dict[str, str]:
    """Each class's image: the served top-1 label."""
    found = {}
    for cls, path in images.items():
        r = requests.post(f"{url}/invocations", data=path.read_bytes(), headers={"Content-Type": "image/jpeg"},
                          timeout=120)
        assert r.status_code == 200, r.text
        found[cls] = r.json()["predictions"][0][0]["label"]
    return found


def test_arm64_image_is_arm64_and_small(docker_image_arm64):
    (info,) = json.loads(subprocess.run(["docker", "image", "inspect", docker_image_arm64], capture_output=True,
                                        text=True, check=True).stdout)
    assert (info["Os"], info["Architecture"]) == ("linux", "arm64")
    assert info["Size"] <= MAX_CPU_IMAGE_BYTES, f"{info['Size'] / 1e9:.2f} GB"
    machine = subprocess.run(["docker", "run", "--rm", "--entrypoint", "uname", docker_image_arm64, "-m"],
                             capture_output=True, text=True, timeout=120).stdout.strip()
    assert machine == "aarch64"


def test_arm64_image_serves_as_the_x86_one(docker_image_arm64, docker_image_cpu, artifact):
    model_dir, images = artifact
    with serving(docker_image_cpu, model_dir) as (url, _, _):
        x86 = answers(url, images)
    with serving(docker_image_arm64, model_dir) as (url, seconds, name):
        arm64 = answers(url, images)
        hostile = requests.post(f"{url}/invocations", data=b"\xff\xd8\xff" + b"\x00" * 64,
                                headers={"Content-Type": "image/jpeg"}, timeout=120)
        again = answers(url, images)
        log = logs(name)
    decision = next((line.strip() for line in log.splitlines() if "precision auto:" in line), log[-3000:])
    print(f"arm64 under emulation: /ping after {seconds:.0f} s; {decision}; answers {arm64}, x86 {x86}")
    assert 400 <= hostile.status_code < 500 and "message" in hostile.json()
    # int8 was measured with x86 kernels only: the ARM server measured it again before serving it
    assert "int8 re-checked with this CPU's aarch64 kernels" in decision, decision
    assert again == arm64  # the worker survived the hostile body and answers as before
    assert arm64 == x86, decision
