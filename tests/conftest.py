"""Shared fixtures: synthetic image folders, the Docker image, and skip-or-fail for missing tools.

A test that needs Docker, multi-model-server or the SDK's local mode skips where the tool is
missing, unless IMGCLF_REQUIRE_ALL=1 (set by .ci/run): then the skip is a failure, so a green CI
means the real thing ran.
"""
from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
IMAGE_TAG = os.environ.get("IMGCLF_TEST_IMAGE", "imgclf:test")
COLORS = {"blue": (30, 30, 220), "green": (30, 200, 30), "red": (220, 30, 30)}


def require(available: bool, reason: str) -> None:
    """Skip the calling test when `available` is false; fail instead under IMGCLF_REQUIRE_ALL=1."""
    if available:
        return
    if os.environ.get("IMGCLF_REQUIRE_ALL") == "1":
        pytest.fail(f"required in CI but unavailable: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    """A loopback port nothing listens on (the kernel's choice), for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_artifact(model_dir: Path):
    """The network (eval mode) and card of a model artifact, rebuilt as serving does."""
    from imgclf.artifact.network import load_artifact

    return load_artifact(model_dir)


def docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def make_image_folder(root: Path, per_class: int = 8, size: tuple[int, int] = (64, 48), seed: int = 0,
                      classes=COLORS, fmt: str = "JPEG") -> Path:
    """Class folders of images whose class is the colour of a disc on a random background."""
    rng = random.Random(seed)
    for name, color in classes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = Image.new("RGB", size, tuple(rng.randint(0, 255) for _ in range(3)))
            w, h = size
            x, y = rng.randint(0, w // 2), rng.randint(0, h // 2)
            ImageDraw.Draw(img).ellipse([x, y, x + w // 2, y + h // 2], fill=color)
            img.save(folder / f"{i}.{'jpg' if fmt == 'JPEG' else fmt.lower()}", fmt)
    return root


@pytest.fixture
def image_folders(tmp_path) -> Path:
    """train/valid/test class folders of small synthetic images (3 classes)."""
    for split, n, seed in (("train", 12, 0), ("valid", 4, 1), ("test", 4, 2)):
        make_image_folder(tmp_path / "data" / split, per_class=n, seed=seed)
    return tmp_path / "data"


@pytest.fixture(scope="session")
def docker_image() -> str:
    """The product image, built once per test session (layers cached between sessions), with
    $BASE_IMAGE and $DOCKER_BUILD_ARGS when set."""
    require(docker_available(), "no Docker engine")
    # the build users run, without baked-in weights: tests never download (CI is offline)
    subprocess.run([str(ROOT / "docker" / "build.sh"), IMAGE_TAG, "--build-arg", "PRETRAINED_ARCHS="], check=True)
    return IMAGE_TAG


@pytest.fixture(scope="session")
def docker_image_cpu() -> str:
    """The slim CPU serving image (VARIANT=cpu), tagged $IMGCLF_TEST_IMAGE-cpu, built once per session."""
    require(docker_available(), "no Docker engine")
    tag = f"{IMAGE_TAG}-cpu"
    subprocess.run([str(ROOT / "docker" / "build.sh"), tag, "--build-arg", "VARIANT=cpu", "--build-arg",
                    "PRETRAINED_ARCHS="], check=True)
    return tag
