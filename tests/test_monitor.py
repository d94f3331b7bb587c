"""`imgclf monitor` on real captures: a model trained on Fashion-MNIST answers, through the real
serving handler, photos it never saw (local_test/make_captures.py writes them as SageMaker captures
them); drift is found in each shifted set and not in the clean one. Plus the checks' own figures."""
from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, require
from serve_support import MockContext
from test_launch import aws, cli_env, sent  # noqa: F401 (fixtures)
from test_launch_local import local_root  # noqa: F401 (fixture)

from imgclf.monitor import analysis, baseline_source, drift
from imgclf.monitor.capture import answer_probabilities, read_capture
from imgclf.monitor.cli import DRIFT_EXIT, run

sys.path.insert(0, str(ROOT / "local_test"))
import make_captures  # noqa: E402
import make_sample_data  # noqa: E402

CLASSES = ["bag", "dress", "sneaker", "trouser"]
PER_CLASS = 50  # captured photos per class and set: 200 requests a set


@pytest.fixture(scope="module")
def fashion_model(tmp_path_factory) -> Path:
    """A model of four Fashion-MNIST classes: efficientnet_lite0's ImageNet features, a linear head."""
    require((make_sample_data.DEFAULT_SOURCE / "train-images-idx3-ubyte.gz").is_file(),
            "Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    from imgclf.train.contract import TrainingEnvironment
    from imgclf.train.job import run as train

    tmp = tmp_path_factory.mktemp("fashion")
    make_sample_data.write_sample(tmp / "data", per_class=60, names=CLASSES)
    channels = {"training": tmp / "data" / "train", "validation": tmp / "data" / "valid", "test": tmp / "data" / "test"}
    env = TrainingEnvironment(model_dir=tmp / "model", output_data_dir=tmp / "output" / "data", output_dir=tmp / "output",
                              checkpoint_dir=tmp / "checkpoints", channels=channels, hyperparameters={
                                  "arch": "efficientnet_lite0", "pretrained": "true", "recipe": "linear", "epochs": "4",
                                  "image-size": "64", "batch-size": "32", "num-workers": "0", "log-interval": "0",
                                  "serving-formats": "false", "amp": "false"})
    assert train(env) == 0
    return env.model_dir


@pytest.fixture(scope="module")
def captures(fashion_model, tmp_path_factory) -> Path:
    """The four capture sets, answered by the serving handler (float32) as an endpoint answers."""
    from imgclf.serve.environment import ServingEnvironment
    from imgclf.serve.handler import ImageClassifierHandler

    tmp = tmp_path_factory.mktemp("captures")
    handler = ImageClassifierHandler(ServingEnvironment(model_dir=fashion_model, models_dir=tmp, precision="fp32"))
    handler.initialize(MockContext(fashion_model))

    def answer(body: bytes, accept: str) -> str:
        return handler.handle([{"body": body}], MockContext(fashion_model, [{"Content-Type": "image/jpeg",
                                                                             "Accept": accept}]))[0]

    counts = make_captures.write_all(tmp, CLASSES, answer, per_class=PER_CLASS)
    assert counts == dict.fromkeys(make_captures.SETS, 4 * PER_CLASS)
    return tmp


def monitor(capsys, capture: Path, model: Path, out: Path, ground_truth: Path | None = None,
            fail_on_drift: bool = False) -> tuple[int, str]:
    args = argparse.Namespace(capture=str(capture), baseline=str(model), output=str(out),
                              ground_truth=str(ground_truth) if ground_truth else None, fail_on_drift=fail_on_drift)
    code = run(args)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("monitor: ")
    return code, lines[-1]


def test_clean_captures_show_no_drift(captures, fashion_model, tmp_path, capsys):
    code, line = monitor(capsys, captures / "clean" / "capture", fashion_model, tmp_path, fail_on_drift=True)
    assert code == 0 and "records=200 images=200 drift=no" in line, line
    assert json.loads((tmp_path / "violations.json").read_text()) == {"violations": []}
    statistics = json.loads((tmp_path / "statistics.json").read_text())
    assert statistics["dataset"]["item_count"] == 200 and statistics["drift"] is False
    assert {c["name"] for c in statistics["checks"] if c["p_value"] is not None} >= {
        "predicted_class", "confidence", "entropy", "input.brightness", "input.contrast"}
    html = (tmp_path / "report.html").read_text()
    assert "No drift" in html and "<svg" in html


def test_a_prior_shift_is_found_in_the_predicted_classes(captures, fashion_model, tmp_path, capsys):
    code, line = monitor(capsys, captures / "prior_shift", fashion_model, tmp_path, fail_on_drift=True)
    assert code == DRIFT_EXIT and "drift=yes" in line and "predicted_class" in line.split("drifted=")[1], line
    (violation, *_) = json.loads((tmp_path / "violations.json").read_text())["violations"]
    assert violation["feature_name"] == "predicted_class"
    assert violation["constraint_check_type"] == "baseline_drift_check"


def test_a_covariate_shift_is_found_in_the_inputs(captures, fashion_model, tmp_path, capsys):
    code, line = monitor(capsys, captures / "covariate_shift", fashion_model, tmp_path)
    assert code == 0 and "drift=yes" in line, line  # without --fail-on-drift
    drifted = line.split("drifted=")[1].split()[0].split(",")
    assert "input.brightness" in drifted, line
    assert "Drift found" in (tmp_path / "report.html").read_text()


def test_ground_truth_gives_live_accuracy_and_recall(captures, fashion_model, tmp_path, capsys):
    model_tar = tmp_path / "model.tar.gz"  # the archive, as SageMaker stores the model
    import tarfile

    with tarfile.open(model_tar, "w:gz") as tar:
        for f in fashion_model.iterdir():
            tar.add(f, arcname=f.name)
    code, line = monitor(capsys, captures / "ground_truth" / "capture", model_tar, tmp_path / "out",
                         ground_truth=captures / "ground_truth" / "labels")
    assert "labelled=200" in line and "drift=no" in line, line
    checks = {c["name"]: c for c in json.loads((tmp_path / "out" / "statistics.json").read_text())["checks"]}
    assert set(checks) >= {"accuracy", *(f"recall.{c}" for c in CLASSES)}
    assert checks["accuracy"]["live"] > 0.8
    evaluation = json.loads((fashion_model / "evaluation.json").read_text())
    assert checks["accuracy"]["baseline"] == pytest.approx(
        evaluation["multiclass_classification_metrics"]["accuracy"]["value"], abs=1e-6)


def test_a_small_sample_claims_no_drift(captures, fashion_model, tmp_path, capsys):
    """Ten requests of the prior shift: too few to tell, so no verdict of drift."""
    lines = next((captures / "prior_shift").rglob("*.jsonl")).read_text().splitlines()[:10]
    (tmp_path / "few.jsonl").write_text("\n".join(lines) + "\n")
    code, line = monitor(capsys, tmp_path / "few.jsonl", fashion_model, tmp_path / "out", fail_on_drift=True)
    assert code == 0 and "records=10" in line and "drift=no" in line, line


# ---------------------------------------------------------------------------------------------
# the pieces


def test_chi_square_needs_both_significance_and_effect():
    priors = {"a": 0.5, "b": 0.5}
    same = drift.categorical("c", "prediction", {"a": 510, "b": 490}, priors)
    shifted = drift.categorical("c", "prediction", {"a": 900, "b": 100}, priors)
    few = drift.categorical("c", "prediction", {"a": 4, "b": 0}, priors)
    threshold = drift.decide([same, shifted, few])
    assert threshold == pytest.approx(0.01 / 2)  # two tests ran; the small one was skipped
    assert not same.drift and shifted.drift and shifted.effect == pytest.approx(0.4)
    assert few.skipped and not few.drift


def test_ks_and_fisher_follow_their_sample_sizes():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 1.0, 500).tolist()
    lower = drift.two_sample("confidence", "prediction", rng.uniform(0.3, 0.8, 300).tolist(), base)
    alike = drift.two_sample("confidence", "prediction", rng.uniform(0.5, 1.0, 300).tolist(), base)
    tiny = drift.two_sample("confidence", "prediction", [0.1] * 5, base)
    drop = drift.proportion_drop("accuracy", 150, 200, 95, 100)  # 0.75 against 0.95
    level = drift.proportion_drop("accuracy", 23, 24, 24, 24)  # one miss in 24: nothing to tell
    drift.decide([lower, alike, tiny, drop, level])
    assert lower.drift and not alike.drift and tiny.skipped and drop.drift and not level.drift


def test_both_answer_shapes_give_every_class_a_probability():
    classes = ("a", "b", "c", "d")
    top2 = {"predictions": [[{"label": "c", "probability": 0.7}, {"label": "a", "probability": 0.2}]]}
    (p,) = answer_probabilities(top2, classes)
    assert p.tolist() == pytest.approx([0.2, 0.05, 0.7, 0.05])
    verbose = {"labels": list(classes), "probabilities": [0.1, 0.2, 0.3, 0.4], "predicted_label": "d"}
    assert answer_probabilities(verbose, classes)[0].tolist() == [0.1, 0.2, 0.3, 0.4]
    assert len(answer_probabilities([verbose, verbose], classes)) == 2


def test_json_requests_and_error_answers_in_captures(fashion_model, tmp_path):
    one = base64.b64encode(make_captures.jpeg(make_captures.photos(["bag"], 1, 0)[0][0])).decode()
    record = {"captureData": {
        "endpointInput": {"observedContentType": "application/json", "mode": "INPUT",
                          "data": json.dumps({"instances": [one, {"b64": one}]}), "encoding": "JSON"},
        "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT", "encoding": "BASE64",
                           "data": base64.b64encode(json.dumps({"predictions": [
                               [{"label": c, "probability": 0.25} for c in CLASSES]] * 2}).encode()).decode()}},
        "eventMetadata": {"eventId": "e1", "inferenceTime": "2026-12-07T18:00:00Z"}, "eventVersion": "0"}
    error = json.loads(json.dumps(record))
    error["captureData"]["endpointOutput"] = {"observedContentType": "application/json", "mode": "OUTPUT",
                                              "encoding": "JSON", "data": '{"error": "Bad Request", "message": "x"}'}
    deep = tmp_path / "ep" / "AllTraffic" / "2026" / "12" / "07" / "18"
    deep.mkdir(parents=True)
    (deep / "a.jsonl").write_text(json.dumps(record) + "\n" + json.dumps(error) + "\nnot json\n")
    capture = read_capture(str(tmp_path), tuple(CLASSES))
    assert (capture.files, capture.records, capture.errors, capture.unreadable) == (1, 2, 1, 1)
    assert len(capture.observations) == 2 and capture.observations[1].inference_id == "e1"
    assert capture.observations[0].inputs["width"] == 64 and capture.observations[0].inputs["channels"] == 1
    model = baseline_source.load(str(fashion_model))
    result = analysis.analyse(model, capture)
    assert not result.drift and analysis.violations(result) == {"violations": []}


def test_processing_job_runs_the_monitor_on_the_image(aws, sent, cli_env, capsys, monkeypatch):  # noqa: F811
    """`imgclf monitor ... --processing` against moto: the inputs SageMaker copies in, the program and
    its arguments, the output uploaded."""
    from imgclf.launch import cli, options
    from test_launch import IMAGE, ROLE

    monkeypatch.setattr(options, "target", lambda args: aws)
    cli.main(["monitor", "s3://cap/dogs/AllTraffic", "--baseline", "s3://models/job/output/model.tar.gz",
              "--output", "s3://reports/dogs/2026-12-07-18", "--ground-truth", "s3://gt/dogs", "--fail-on-drift",
              "--processing", "--no-wait", "--image-uri", IMAGE, "--role", ROLE, "--region", "us-east-1"])
    assert "processing job: imgclf-monitor-" in capsys.readouterr().out
    (job,) = sent["CreateProcessingJob"]
    app = job["AppSpecification"]
    assert app["ImageUri"] == IMAGE and app["ContainerEntrypoint"] == ["imgclf-monitor"]
    assert app["ContainerArguments"] == [
        "/opt/ml/processing/input/capture", "--baseline", "/opt/ml/processing/input/model/model.tar.gz",
        "--output", "/opt/ml/processing/output", "--ground-truth", "/opt/ml/processing/input/ground_truth",
        "--fail-on-drift"]
    sources = {i["InputName"]: i["S3Input"]["S3Uri"] for i in job["ProcessingInputs"]}
    assert sources == {"capture": "s3://cap/dogs/AllTraffic", "model": "s3://models/job/output/model.tar.gz",
                       "ground_truth": "s3://gt/dogs"}
    (output,) = job["ProcessingOutputConfig"]["Outputs"]
    assert output["S3Output"]["S3Uri"] == "s3://reports/dogs/2026-12-07-18"
    with pytest.raises(SystemExit):
        cli.main(["monitor", "./capture", "--baseline", "model.tar.gz", "--output", "out", "--processing",
                  "--image-uri", IMAGE, "--role", ROLE, "--region", "us-east-1"])
    assert "not an s3:// URI" in capsys.readouterr().err


@pytest.mark.docker
@pytest.mark.slow
def test_a_local_processing_job_on_the_image(docker_image, captures, fashion_model, local_root,  # noqa: F811
                                             tmp_path, capsys, monkeypatch):
    """`imgclf monitor --processing --local`: the Processing job on the image in SageMaker local mode
    (Docker Compose), imgclf-monitor as the container's entry point, the inputs copied in and the
    output copied back. The prior shift with the model's archive fails the job (--fail-on-drift) and
    the command exits 3; the ground-truth set with the model's folder shows no drift."""
    import shutil
    import tarfile

    from imgclf.launch import cli

    require(shutil.which("docker-compose") is not None, "no docker-compose for SageMaker local mode")
    monkeypatch.delenv("SAGEMAKER_SUPPRESS_V2_WARNING", raising=False)  # restored after cli.main sets it
    model_tar = tmp_path / "model" / "model.tar.gz"
    model_tar.parent.mkdir()
    with tarfile.open(model_tar, "w:gz") as tar:
        for f in fashion_model.iterdir():
            tar.add(f, arcname=f.name)
    local = ["--processing", "--local", "--image-uri", docker_image, "--local-root", str(local_root)]

    def verdict() -> str:
        out = capsys.readouterr().out
        (line,) = [line for line in out.splitlines() if "monitor: records=" in line]  # the container's log
        return line.split("monitor: ", 1)[1]

    with pytest.raises(SystemExit) as exit_:
        cli.main(["monitor", str(captures / "prior_shift"), "--baseline", str(model_tar), "--output",
                  str(tmp_path / "prior_shift"), "--fail-on-drift", *local])
    line = verdict()
    assert exit_.value.code == DRIFT_EXIT and "records=200 images=200 drift=yes" in line, line
    assert "predicted_class" in line.split("drifted=")[1], line
    assert {f.name for f in (tmp_path / "prior_shift").iterdir()} == {
        analysis.REPORT_FILE, analysis.VIOLATIONS_FILE, analysis.STATISTICS_FILE}
    (violation, *_) = json.loads((tmp_path / "prior_shift" / analysis.VIOLATIONS_FILE).read_text())["violations"]
    assert violation["feature_name"] == "predicted_class"
    assert json.loads((tmp_path / "prior_shift" / analysis.STATISTICS_FILE).read_text())["drift"] is True
    assert "Drift found" in (tmp_path / "prior_shift" / analysis.REPORT_FILE).read_text()

    cli.main(["monitor", str(captures / "ground_truth" / "capture"), "--baseline", str(fashion_model),
              "--ground-truth", str(captures / "ground_truth" / "labels"), "--output", str(tmp_path / "clean"),
              "--fail-on-drift", *local])
    line = verdict()
    assert "records=200" in line and "labelled=200" in line and "drift=no" in line, line
    assert json.loads((tmp_path / "clean" / analysis.VIOLATIONS_FILE).read_text()) == {"violations": []}
