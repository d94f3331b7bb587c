"""The image as SageMaker runs it, tracked: `docker run IMAGE train` of the sample job with
MLFLOW_TRACKING_URI and tensorboardoutputconfig.json logs a run to a real MLflow server on this
machine and writes event files; `imgclf tune --local --mlflow` logs a parent run with a child per trial."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow_support import mlflow_server, runs_of  # noqa: F401 (fixture)

from imgclf.launch import cli

SAMPLE = Path(__file__).resolve().parents[1] / "local_test" / "test_dir"
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def sample_job(root: Path, **hps) -> Path:
    shutil.copytree(SAMPLE, root)
    config = root / "input" / "config"
    raw = json.loads((config / "hyperparameters.json").read_text())
    (config / "hyperparameters.json").write_text(json.dumps({**raw, "serving-formats": "false", **hps}))
    (config / "tensorboardoutputconfig.json").write_text(json.dumps({
        "LocalPath": "/opt/ml/output/tensorboard", "S3OutputPath": "s3://bucket/job/tensorboard"}))
    return root


@pytest.mark.docker
def test_the_sample_job_in_the_image_logs_its_run_and_event_files(docker_image, mlflow_server, tmp_path):
    ml = sample_job(tmp_path / "ml")
    proc = subprocess.run(["docker", "run", "--rm", "--network", "host", "-e", f"MLFLOW_TRACKING_URI={mlflow_server}",
                           "-e", "MLFLOW_EXPERIMENT_NAME=image-test", "-e", "TRAINING_JOB_NAME=imgclf-sample-1",
                           "-v", f"{ml}:/opt/ml", docker_image, "train"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client, runs = runs_of(mlflow_server, "image-test")
    (run,) = runs
    assert run.info.status == "FINISHED" and run.info.run_name == "imgclf-sample-1"
    assert run.data.params["arch"] == "efficientnet_lite0" and run.data.params["epochs"] == "3"
    valid_acc = client.get_metric_history(run.info.run_id, "valid_acc")
    assert [m.step for m in valid_acc] == [1, 2, 3]
    html = Path(client.download_artifacts(run.info.run_id, "profiler-report.html", str(tmp_path))).read_text()
    row = re.search(r"<b>PoorWeightInitialization</b>.*?<td class='num'>(\d+)</td>", html, re.S)
    assert row.group(1) == "0"  # the frozen pretrained backbone is not judged, only the new head
    print(f"valid_acc per epoch: {[(m.step, round(m.value, 4)) for m in valid_acc]}")

    acc = event_accumulator.EventAccumulator(str(ml / "output" / "tensorboard"),
                                             size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, len(loss) + 1)) and len(loss) >= 3
    assert [e.step for e in acc.Scalars("epoch/valid_acc")] == [1, 2, 3]
    assert [round(e.value, 6) for e in acc.Scalars("epoch/valid_acc")] == [round(m.value, 6) for m in valid_acc]
    print(f"event files: train/loss steps 1-{len(loss)}, epoch/valid_acc steps 1-3, "
          f"{len(acc.Scalars('system/cpu'))} system/cpu samples")


@pytest.mark.docker
def test_a_local_search_in_the_image_is_a_parent_run_with_four_children(docker_image, mlflow_server, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "unused")  # the flag decides, not the launcher's environment
    cli.main(["tune", "--local", "--image-uri", docker_image, "--data", str(SAMPLE / "input" / "data"),
              "--max-jobs", "4", "--output-path", str(tmp_path / "tuning"), "--mlflow", mlflow_server,
              "--mlflow-experiment", "image-search", "--arch", "efficientnet_lite0", "--image-size", "32",
              "--epochs", "3", "--num-workers", "0"])
    _, runs = runs_of(mlflow_server, "image-search")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", runs
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == 4
    states = sorted(r.data.tags["imgclf.trial_state"] for r in children)
    assert set(states) <= {"complete", "pruned"}
    print(f"parent {parents[0].info.run_id}: children {states}")
