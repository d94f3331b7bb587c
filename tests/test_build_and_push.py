"""build_and_push.sh against a real registry on 127.0.0.1 (Debian's docker-registry) and against
Amazon ECR and STS as moto's server answers them, with dummy credentials.

moto cannot be a registry that `docker login` reaches, so the ECR runs check everything up to the
login: account and region, the repository created when missing, and a clear failure after that.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
import requests
from conftest import ROOT, docker_available, free_port, require

SCRIPT = ROOT / "build_and_push.sh"
MOTO_ACCOUNT = "123456789012"  # the account moto's STS answers with


@contextlib.contextmanager
def running(cmd: list[str], ready_url: str, what: str):
    """A server process for the duration of a fixture: started, polled until `ready_url` answers
    200, stopped with SIGTERM (then killed) afterwards."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{what} exited with {proc.returncode}")
            try:
                if requests.get(ready_url, timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{what} did not answer on {ready_url}")
            time.sleep(0.2)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def registry(tmp_path):
    """A Docker registry (distribution v2) on a free port of 127.0.0.1; Docker pushes to it over HTTP."""
    binary = shutil.which("docker-registry")
    require(binary is not None, "no docker-registry (apt-get install docker-registry)")
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                      f"    rootdirectory: {tmp_path / 'registry'}\nhttp:\n  addr: 127.0.0.1:{port}\n")
    with running([binary, "serve", str(config)], f"http://127.0.0.1:{port}/v2/", "docker-registry"):
        yield f"127.0.0.1:{port}"


@pytest.fixture
def moto(tmp_path):
    """moto's server on a free port of 127.0.0.1: the AWS endpoint for STS and ECR."""
    binary = Path(sys.executable).parent / "moto_server"
    require(binary.exists(), "no moto_server (pip install 'moto[server]')")
    port = free_port()
    with running([str(binary), "-H", "127.0.0.1", "-p", str(port)], f"http://127.0.0.1:{port}/moto-api/",
                 "moto_server"):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def script_env(tmp_path) -> dict[str, str]:
    """A clean environment: no credentials, an empty AWS and Docker configuration; the build's
    BASE_IMAGE and DOCKER_BUILD_ARGS kept, so builds hit the layers of the session's image."""
    (tmp_path / "home").mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path / "home"),
        "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata credentials lookup
        "DOCKER_CONFIG": str(tmp_path / "docker-config"),  # a login never lands in the user's config
    }
    env.update({k: os.environ[k] for k in ("BASE_IMAGE", "BASE_IMAGE_ARM64", "DOCKER_BUILD_ARGS", "DOCKER_HOST")
                if k in os.environ})
    return env


@pytest.fixture
def aws_env(script_env, moto, tmp_path) -> dict[str, str]:
    """script_env with dummy credentials in a profile `ci` (region eu-west-1) and moto as AWS."""
    Path(script_env["AWS_SHARED_CREDENTIALS_FILE"]).write_text(
        "[ci]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    Path(script_env["AWS_CONFIG_FILE"]).write_text("[profile ci]\nregion = eu-west-1\n")
    return {**script_env, "AWS_ENDPOINT_URL": moto}


def run_script(env: dict[str, str], *args: str, bash: str = "bash") -> subprocess.CompletedProcess:
    return subprocess.run([bash, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=1800)


def image_layers(ref: str) -> list[str]:
    out = subprocess.run(["docker", "image", "inspect", "-f", "{{json .RootFS.Layers}}", ref], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)


def ecr(moto: str, region: str = "eu-west-1"):
    return boto3.client("ecr", region_name=region, endpoint_url=moto,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def test_help_and_bad_arguments(script_env):
    assert "Usage: ./build_and_push.sh" in run_script(script_env, "--help").stdout
    bad = run_script(script_env, "--regoin", "eu-west-1")
    assert bad.returncode != 0 and "unknown option --regoin" in bad.stderr
    extra = run_script(script_env, "a", "b", "c")
    assert extra.returncode != 0 and "too many arguments" in extra.stderr


@pytest.fixture
def small_image(tmp_path):
    """A one-file image to push: a registry round trip of the product image (6 GB) would dominate CI."""
    require(docker_available(), "no Docker engine")
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "hello.txt").write_text(f"pushed by {__name__}\n")
    (tmp_path / "ctx" / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /\n")
    subprocess.run(["docker", "build", "-q", "-t", "imgclf-push:v1", str(tmp_path / "ctx")], check=True,
                   capture_output=True)
    yield "imgclf-push", "v1"
    subprocess.run(["docker", "rmi", "imgclf-push:v1"], capture_output=True)


def test_push_to_a_registry(registry, script_env, small_image):
    name, tag = small_image
    proc = run_script(script_env, "--no-build", "--registry", registry, name, tag)
    try:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert f"pushed {registry}/{name}:{tag}" in proc.stdout
        assert requests.get(f"http://{registry}/v2/{name}/tags/list", timeout=10).json()["tags"] == [tag]
        # what the registry holds is the local image
        digests = subprocess.run(["docker", "image", "inspect", "-f", "{{json .RepoDigests}}", f"{registry}/{name}:{tag}"],
                                 capture_output=True, text=True, check=True).stdout
        manifest = requests.head(f"http://{registry}/v2/{name}/manifests/{tag}", timeout=10, headers={
            "Accept": "application/vnd.docker.distribution.manifest.v2+json"})
        assert manifest.headers["Docker-Content-Digest"] in digests
    finally:
        subprocess.run(["docker", "rmi", f"{registry}/{name}:{tag}"], capture_output=True)

    missing = run_script(script_env, "--no-build", "--registry", registry, name, "no-such-tag")
    assert missing.returncode != 0 and f"no local image {name}:no-such-tag" in missing.stderr


def test_build_then_push_to_an_unreachable_registry(docker_image, script_env):
    """The script builds the product image (from the session's cached layers), tags it, and says
    clearly that the push failed."""
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
    proc = run_script(script_env, "--no-weights", "--registry", nowhere, "imgclf-build", "v0")  # offline here
    try:
        assert proc.returncode != 0
        assert f"docker push {nowhere}/imgclf-build:v0 failed" in proc.stderr, proc.stderr[-3000:]
        session, built, tagged = (image_layers(ref) for ref in (docker_image, "imgclf-build:v0", f"{nowhere}/imgclf-build:v0"))
        assert built == tagged
        # the same Dockerfile and arguments: every layer up to the package's own three is shared
        assert built[:-3] == session[:-3] and len(built) == len(session)
    finally:
        subprocess.run(["docker", "rmi", "imgclf-build:v0", f"{nowhere}/imgclf-build:v0"], capture_output=True)


def test_cpu_image_builds_and_pushes(registry, script_env, docker_image_cpu):
    """--cpu builds the slim serving image (VARIANT=cpu; the session's cached layers) and pushes it."""
    dry = run_script(script_env, "--dry-run", "--cpu", "--registry", registry)
    assert "+ docker build --network host -t imgclf-cpu:latest" in dry.stdout  # its own default name
    assert "--build-arg VARIANT=cpu" in dry.stdout and f"+ docker push {registry}/imgclf-cpu:latest" in dry.stdout
    proc = run_script(script_env, "--cpu", "--registry", registry, "imgclf-cpu-push", "v1")
    try:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert f"pushed {registry}/imgclf-cpu-push:v1" in proc.stdout
        assert requests.get(f"http://{registry}/v2/imgclf-cpu-push/tags/list", timeout=10).json()["tags"] == ["v1"]
        pushed, session = image_layers("imgclf-cpu-push:v1"), image_layers(docker_image_cpu)
        assert pushed[:-3] == session[:-3] and len(pushed) == len(session)  # all but the package's own layers
    finally:
        subprocess.run(["docker", "rmi", "imgclf-cpu-push:v1", f"{registry}/imgclf-cpu-push:v1"], capture_output=True)


@pytest.fixture
def small_images_per_arch(tmp_path):
    """One-file images built for linux/amd64 and linux/arm64 (scratch: no emulation needed), tagged
    as a multi-platform build tags them."""
    require(docker_available(), "no Docker engine")
    tags = []
    for arch in ("amd64", "arm64"):
        ctx = tmp_path / arch
        ctx.mkdir()
        (ctx / "arch.txt").write_text(f"{arch}\n")  # distinct content: no build cache shared between the two
        (ctx / "Dockerfile").write_text("FROM scratch\nCOPY arch.txt /\n")
        subprocess.run(["docker", "build", "-q", "--platform", f"linux/{arch}", "-t", f"imgclf-multi:v1-{arch}",
                        str(ctx)], check=True, capture_output=True)
        tags.append(f"imgclf-multi:v1-{arch}")
    yield "imgclf-multi", "v1"
    subprocess.run(["docker", "rmi", *tags], capture_output=True)


def test_several_platforms_push_one_manifest_list(registry, script_env, small_images_per_arch):
    """--platform linux/amd64,linux/arm64: each image pushed as TAG-ARCH, and TAG a manifest list
    from which each architecture pulls its own."""
    name, tag = small_images_per_arch
    dry = run_script(script_env, "--dry-run", "--cpu", "--platform", "linux/amd64,linux/arm64", "--registry", registry)
    assert dry.returncode == 0, dry.stderr
    assert "-t imgclf-cpu:latest-arm64" in dry.stdout and "--platform linux/arm64" in dry.stdout
    if script_env.get("BASE_IMAGE_ARM64"):  # the arm64 build gets the arm64 base
        assert f"BASE_IMAGE={script_env['BASE_IMAGE_ARM64']}" in dry.stdout
    assert f"docker manifest create --insecure {registry}/imgclf-cpu:latest {registry}/imgclf-cpu:latest-amd64 " \
           f"{registry}/imgclf-cpu:latest-arm64" in dry.stdout
    refused = run_script(script_env, "--dry-run", "--platform", "linux/arm64", "--registry", registry)
    assert refused.returncode == 2 and "builds the CPU serving image only: add --cpu" in refused.stderr

    proc = run_script(script_env, "--no-build", "--cpu", "--platform", "linux/amd64,linux/arm64", "--registry",
                      registry, name, tag)
    try:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert f"pushed {registry}/{name}:{tag}: a manifest list of linux/amd64 linux/arm64" in proc.stdout
        listed = requests.get(f"http://{registry}/v2/{name}/manifests/{tag}", timeout=10, headers={
            "Accept": "application/vnd.docker.distribution.manifest.list.v2+json"}).json()
        assert listed["mediaType"] == "application/vnd.docker.distribution.manifest.list.v2+json"
        by_arch = {m["platform"]["architecture"]: m["digest"] for m in listed["manifests"]}
        for arch in ("amd64", "arm64"):
            own = requests.head(f"http://{registry}/v2/{name}/manifests/{tag}-{arch}", timeout=10, headers={
                "Accept": "application/vnd.docker.distribution.manifest.v2+json"})
            assert by_arch[arch] == own.headers["Docker-Content-Digest"]
    finally:
        subprocess.run(["docker", "rmi", *(f"{registry}/{name}:{tag}-{arch}" for arch in ("amd64", "arm64"))],
                       capture_output=True)
    # an image whose architecture is not the one its tag claims is refused before anything is pushed
    subprocess.run(["docker", "tag", f"{name}:{tag}-arm64", f"{name}:mixed-amd64"], check=True)
    subprocess.run(["docker", "tag", f"{name}:{tag}-arm64", f"{name}:mixed-arm64"], check=True)
    try:
        mixed = run_script(script_env, "--no-build", "--cpu", "--platform", "linux/amd64,linux/arm64", "--registry",
                           registry, name, "mixed")
        assert mixed.returncode == 1 and f"{name}:mixed-amd64 is a linux/arm64 image, not linux/amd64" in mixed.stderr
    finally:
        subprocess.run(["docker", "rmi", f"{name}:mixed-amd64", f"{name}:mixed-arm64"], capture_output=True)


def test_dry_run_prints_and_changes_nothing(registry, script_env):
    proc = run_script(script_env, "--dry-run", "--platform", "linux/amd64", "--registry", f"{registry}/team",
                      "imgclf-dry", "v2")
    assert proc.returncode == 0, proc.stderr
    assert "+ docker build --network host -t imgclf-dry:v2" in proc.stdout and "--platform linux/amd64" in proc.stdout
    if script_env.get("BASE_IMAGE"):
        assert f"BASE_IMAGE={script_env['BASE_IMAGE']}" in proc.stdout
    assert f"+ docker push {registry}/team/imgclf-dry:v2" in proc.stdout
    assert requests.get(f"http://{registry}/v2/_catalog", timeout=10).json()["repositories"] == []
    if docker_available():
        assert subprocess.run(["docker", "image", "inspect", "imgclf-dry:v2"], capture_output=True).returncode != 0


def test_weights_are_baked_in_unless_opted_out(registry, script_env):
    """A plain build bakes the default arch's ImageNet weights (the Dockerfile's default); --no-weights,
    for build machines without the internet, leaves them out."""
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "\nARG PRETRAINED_ARCHS=resnet50\n" in dockerfile
    plain = run_script({**script_env, "DOCKER_BUILD_ARGS": ""}, "--dry-run", "--registry", registry, "imgclf-dry", "v3")
    assert plain.returncode == 0 and "+ docker build" in plain.stdout and "PRETRAINED_ARCHS" not in plain.stdout
    opted_out = run_script(script_env, "--dry-run", "--no-weights", "--registry", registry, "imgclf-dry", "v3")
    build_line = next(line for line in opted_out.stdout.splitlines() if line.startswith("+ docker build"))
    assert build_line.rstrip().split()[-3:-1] == ["--build-arg", "PRETRAINED_ARCHS="]  # last: wins over others


def test_ecr_dry_run_reads_account_and_region(aws_env, moto):
    require(shutil.which("aws") is not None, "no AWS CLI")
    proc = run_script(aws_env, "--profile", "ci", "--dry-run", "imgclf-ecr", "v1")
    assert proc.returncode == 0, proc.stderr
    registry = f"{MOTO_ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com"
    assert f"account {MOTO_ACCOUNT}, region eu-west-1" in proc.stdout  # region from the profile
    assert "+ aws ecr create-repository --repository-name imgclf-ecr" in proc.stdout
    assert f"docker login --username AWS --password-stdin {registry}" in proc.stdout
    assert f"+ docker push {registry}/imgclf-ecr:v1" in proc.stdout
    with pytest.raises(ecr(moto).exceptions.RepositoryNotFoundException):
        ecr(moto).describe_repositories(repositoryNames=["imgclf-ecr"])

    overridden = run_script(aws_env, "--profile", "ci", "--region", "ap-southeast-2", "--dry-run", "imgclf-ecr")
    assert f"{MOTO_ACCOUNT}.dkr.ecr.ap-southeast-2.amazonaws.com/imgclf-ecr:latest" in overridden.stdout
    Path(aws_env["AWS_CONFIG_FILE"]).write_text("")  # a profile without a region
    default = run_script(aws_env, "--profile", "ci", "--dry-run", "imgclf-ecr")
    assert f"account {MOTO_ACCOUNT}, region us-west-2" in default.stdout


def test_ecr_creates_repository_then_logs_in(aws_env, moto):
    """moto's ECR has no registry behind it, so `docker login` is where this run must stop, clearly."""
    require(docker_available(), "no Docker engine")
    require(shutil.which("aws") is not None, "no AWS CLI")
    registry = f"{MOTO_ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com"
    for _ in range(2):  # the second run finds the repository and does not create it again
        proc = run_script(aws_env, "--profile", "ci", "imgclf-ecr", "v1")
        assert proc.returncode != 0
        assert f"docker login to {registry} failed" in proc.stderr, proc.stderr
        assert "+ docker build" not in proc.stdout  # nothing built or pushed after a failed login
        repositories = ecr(moto).describe_repositories()["repositories"]
        assert [r["repositoryName"] for r in repositories] == ["imgclf-ecr"]


def test_missing_credentials_fail_clearly(script_env):
    require(docker_available(), "no Docker engine")
    require(shutil.which("aws") is not None, "no AWS CLI")
    proc = run_script(script_env, "imgclf-nocreds")
    assert proc.returncode != 0
    assert "no usable AWS credentials" in proc.stderr and "aws configure" in proc.stderr


def test_missing_docker_fails_clearly(script_env, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("aws", "dirname"):  # everything the script could need before Docker, but Docker
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    proc = run_script({**script_env, "PATH": str(bin_dir)}, "--registry", "127.0.0.1:5000", bash="/bin/bash")
    assert proc.returncode != 0 and "docker not found" in proc.stderr

    require(shutil.which("docker") is not None, "no docker CLI")
    no_engine = {**script_env, "DOCKER_HOST": f"unix://{tmp_path / 'no-such.sock'}"}
    proc = run_script(no_engine, "--registry", "127.0.0.1:5000")
    assert proc.returncode != 0 and "Docker engine does not answer" in proc.stderr
