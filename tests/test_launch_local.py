"""The launcher against the real image in SageMaker local mode (SDK v2, Docker Compose), no AWS account:
train on two containers of two processes each (torchrun, gloo), deploy, invoke with a photo, delete,
a batch transform (top-k answers, then every class's in JumpStart's verbose shape); the same job with
distribution={"torch_distributed": ...} and a user's own script through the SDK's PyTorch estimator;
the local tuner in one container and the final model from its best trial. Data: the bundled sample
(Fashion-MNIST photos as JPEG, in folders named as the channels). Tiny on purpose: resnet18 from
scratch or efficientnet_lite0's head, 32-pixel crops, one or two epochs."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from conftest import ROOT, free_port, require

from imgclf.hpo import OBJECTIVE_METRIC, SEARCH_SPACE
from imgclf.launch import cli, datasets, hosting, session, training

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SAMPLE = ROOT / "local_test" / "test_dir" / "input" / "data"
HYPERPARAMETERS = {"arch": "resnet18", "pretrained": False, "epochs": 1, "image-size": 32, "batch-size": 4,
                   "num-workers": 0, "processes-per-host": 2}
RANKS = 4  # 2 containers x processes-per-host


def running_under(root, stopped_too: bool = False) -> list[str]:
    """Containers that local mode started from a compose file under `root` (this test's only)."""
    out = subprocess.run(["docker", "ps", *(["--all"] if stopped_too else []),
                          "--format", '{{.Names}} {{.Label "com.docker.compose.project.working_dir"}}'],
                         capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if f" {root}/" in line]


@pytest.fixture
def local_root(tmp_path):
    """The SDK's folder for job files; the containers local mode leaves behind, stopped, go with it."""
    yield tmp_path / "sagemaker"
    leftovers = running_under(tmp_path / "sagemaker", stopped_too=True)
    if leftovers:
        subprocess.run(["docker", "rm", "--force", *leftovers], capture_output=True)


@pytest.fixture
def timings(capsys):
    """Seconds per step, printed past pytest's capture at the end of the test."""
    steps: dict[str, float] = {}
    yield steps
    with capsys.disabled():
        print("\nlocal mode: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in steps.items()))


@contextlib.contextmanager
def timed(steps: dict, name: str):
    start = time.perf_counter()
    yield
    steps[name] = time.perf_counter() - start


@pytest.fixture
def data(monkeypatch) -> Path:
    require(shutil.which("docker-compose") is not None, "no docker-compose for SageMaker local mode")
    monkeypatch.delenv("SAGEMAKER_SUPPRESS_V2_WARNING", raising=False)  # restored after cli.main sets it
    return SAMPLE


def test_train_two_instances_deploy_invoke_delete_transform(docker_image, data, local_root, tmp_path, capsys,
                                                            timings):
    classes = set(datasets.check_layout(data)["training"].classes)
    photos = sorted((data / "test").rglob("*.jpg"))
    target = session.local_target(local_root, serving_port=free_port())

    # training through the command line, as a user runs it
    hyperparameters = [a for k, v in HYPERPARAMETERS.items() for a in (f"--{k}", str(v).lower())]
    with timed(timings, "train (2 containers x 2 processes)"):
        cli.main(["train", "--local", "--image-uri", docker_image, "--data", str(data),
                  "--instance-count", "2", "--local-root", str(local_root), *hyperparameters])
    log = capsys.readouterr().out
    (model_data,) = [line.split(": ", 1)[1] for line in log.splitlines() if line.startswith("model artifact: ")]
    assert all(f"rank {r} of {RANKS} (gloo)" in log for r in range(RANKS)), log[-3000:]
    assert log.count("torchrun --nnodes 2 --nproc_per_node 2 --master_addr algo-1-") == 2  # one per container
    assert "valid_acc=" in log and "test_acc=" in log
    assert model_data.startswith((local_root / "imgclf-output" / "imgclf-").as_uri())  # a folder per job
    with tarfile.open(model_data.removeprefix("file://")) as tar:
        assert {"model.pt", "model.json"} <= set(tar.getnames())

    endpoint = "imgclf-local-test"
    try:
        with timed(timings, "deploy"):
            pred = hosting.deploy(target, docker_image, model_data, endpoint_name=endpoint)
        assert running_under(tmp_path), "the endpoint's container should be running"
        photo = photos[0]
        with timed(timings, "invoke"):
            answer = hosting.invoke(pred, photo, top_k=2)
        (top,) = answer["predictions"]
        assert len(top) == 2 and {p["label"] for p in top} <= classes
        assert top[0]["probability"] >= top[1]["probability"] > 0
        assert len(hosting.invoke(pred, photo, top_k=3)["predictions"][0]) == 3
    finally:
        with timed(timings, "delete"):
            deleted = hosting.delete(target, endpoint)
    assert deleted["endpoint"] == [endpoint] and deleted["model"] == [endpoint]
    assert running_under(tmp_path) == []

    batch = tmp_path / "batch"  # local mode transforms the files of one folder, not its subfolders
    batch.mkdir()
    for image in photos[::4]:
        shutil.copy(image, batch / f"{image.parent.name}-{image.name}")
    with timed(timings, "transform"):
        out = hosting.transform(target, docker_image, model_data, datasets.local_uri(batch),
                                (tmp_path / "predictions").as_uri())
    answers = sorted((tmp_path / "predictions").rglob("*.out"))
    assert out == (tmp_path / "predictions").as_uri()
    assert [a.name for a in answers] == sorted(f"{p.name}.out" for p in batch.iterdir())
    assert all(json.loads(a.read_text())["predictions"][0][0]["label"] in classes for a in answers)
    assert running_under(tmp_path) == []

    # every class's probability (JumpStart's verbose shape), asked for on the command line
    with timed(timings, "transform, verbose"):
        cli.main(["transform", "--local", "--image-uri", docker_image, "--model-data", model_data,
                  "--data", str(batch), "--output-path", str(tmp_path / "verbose"), "--accept",
                  "application/json;verbose", "--local-root", str(local_root), "--serving-port", str(free_port())])
    assert f"transform output: {(tmp_path / 'verbose').as_uri()}" in capsys.readouterr().out
    answers = sorted((tmp_path / "verbose").rglob("*.out"))
    assert [a.name for a in answers] == sorted(f"{p.name}.out" for p in batch.iterdir())
    for a in answers:
        answer = json.loads(a.read_text())
        assert set(answer) == {"labels", "probabilities", "predicted_label"}, answer
        assert sorted(answer["labels"]) == sorted(classes) and len(answer["probabilities"]) == len(classes)
        assert sum(answer["probabilities"]) == pytest.approx(1, abs=1e-4)
        best = max(range(len(classes)), key=answer["probabilities"].__getitem__)
        assert answer["predicted_label"] == answer["labels"][best]
    assert running_under(tmp_path) == []


def test_torch_distributed_as_the_estimator_asks_and_a_users_script(docker_image, data, local_root, tmp_path,
                                                                    capsys, timings):
    """The default job with the SDK's distribution={"torch_distributed": {"enabled": True}}; then the
    image in place of AWS's PyTorch container: the SDK's PyTorch estimator with our image_uri runs a
    script of the user's (sagemaker_program, sagemaker_submit_directory) on 2 x 2 ranks."""
    from sagemaker.pytorch import PyTorch

    target = session.local_target(local_root)
    distribution = {"torch_distributed": {"enabled": True}}
    spec = training.JobSpec(docker_image, HYPERPARAMETERS, instance_count=2, distribution=distribution,
                            output_path=(tmp_path / "default").as_uri())
    inputs = datasets.channels(datasets.local_uri(data), datasets.check_layout(data))
    with timed(timings, "train, torch_distributed (2 containers x 2 processes)"):
        model_data = training.train(training.estimator(spec, target), inputs)
    log = capsys.readouterr().out
    assert all(f"rank {r} of {RANKS} (gloo)" in log for r in range(RANKS)), log[-3000:]
    with tarfile.open(model_data.removeprefix("file://")) as tar:
        assert {"model.pt", "model.json"} <= set(tar.getnames())

    script = PyTorch(entry_point="print_rank.py", source_dir=str(ROOT / "tests" / "user_script"),
                     image_uri=docker_image, framework_version="2.5", py_version="py311", role=target.role,
                     instance_type="local", instance_count=2, distribution=distribution,
                     hyperparameters={"epochs": 3, "processes-per-host": 2},
                     output_path=(tmp_path / "script").as_uri(), sagemaker_session=target.session)
    with timed(timings, "user script (2 containers x 2 processes)"):
        script.fit(job_name=f"print-rank-{int(time.time())}")
    log = capsys.readouterr().out
    for r in range(RANKS):
        assert f"user script: rank {r} of {RANKS} epochs=3 model_dir=/opt/ml/model" in log, log[-3000:]


def test_local_tuner_in_one_container_then_the_final_model(docker_image, data, local_root, tmp_path, capsys,
                                                          timings):
    """`imgclf tune --local`: the Optuna tuner in one container of the image (features once, heads in
    turn), best.json on this machine; then `imgclf train --local --best` trains the final model."""
    tuning_dir = tmp_path / "tuning"
    fixed = ["--recipe", "linear", "--arch", "efficientnet_lite0", "--image-size", "32", "--epochs", "2",
             "--num-workers", "0"]
    with timed(timings, "tune (3 trials, cached features, 1 container)"):
        cli.main(["tune", "--local", "--image-uri", docker_image, "--data", str(data), "--max-jobs", "3",
                  "--pruner", "none", "--output-path", str(tuning_dir), "--local-root", str(local_root), *fixed])
    out = capsys.readouterr().out
    assert "features: backbone features" in out and "trial 3/3 complete" in out, out[-3000:]
    best = json.loads((tuning_dir / "best.json").read_text())
    assert best["objective"]["metric"] == OBJECTIVE_METRIC and 0 <= best["objective"]["value"] <= 1
    hps = best["hyperparameters"]
    assert SEARCH_SPACE["lr"].low <= hps["lr"] <= SEARCH_SPACE["lr"].high
    assert hps["batch-size"] in SEARCH_SPACE["batch-size"].values and hps["arch"] == "efficientnet_lite0"
    assert (tuning_dir / "best.json").stat().st_uid == os.getuid()  # the caller's files, not root's

    with timed(timings, "final model (1 container)"):
        cli.main(["train", "--local", "--image-uri", docker_image, "--data", str(data), "--best",
                  str(tuning_dir / "best.json"), "--epochs", "1", "--local-root", str(local_root)])
    log = capsys.readouterr().out
    (model_data,) = [line.split(": ", 1)[1] for line in log.splitlines() if line.startswith("model artifact: ")]
    assert f"lr={hps['lr']:.6g}" in log and "test_acc=" in log  # the best trial's values, trained to the end
    with tarfile.open(model_data.removeprefix("file://")) as tar:
        assert {"model.pt", "model.json"} <= set(tar.getnames())
