"""MLflow tracking against a real server (SQLite, local artifacts): the run of a job, of a search
(parent and children), an unreachable server, the SageMaker ARN plugin."""
import logging

import pytest
from conftest import free_port
from mlflow_support import mlflow_server, runs_of  # noqa: F401 (fixture)
from test_train import job_env

from imgclf.tracking import with_tracking
from imgclf.tracking.settings import MlflowSettings
from imgclf.train.job import main, parse_hyperparameters


def train(env, environ):
    args = parse_hyperparameters(env.hyperparameters)
    from imgclf import debug

    return main(args, env, callbacks=with_tracking(debug.callbacks(args, env), args, env, environ))


def test_a_job_logs_one_run_with_params_metrics_and_artifacts(mlflow_server, image_folders, tmp_path, caplog,
                                                              monkeypatch):
    environ = {"MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_EXPERIMENT_NAME": "job-test",
               "TRAINING_JOB_NAME": "imgclf-job-1"}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)  # as in a job: what sagemaker-mlflow's headers read
    env = job_env(tmp_path, image_folders, epochs="3", lr="0.05")
    with caplog.at_level(logging.WARNING):
        assert train(env, environ) == 0
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("mlflow")]
    client, runs = runs_of(mlflow_server, "job-test")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "imgclf-job-1"
    assert run.data.params["lr"] == "0.05" and run.data.params["arch"] == "resnet18"
    assert run.data.tags["sagemaker.job_name"] == "imgclf-job-1" and "imgclf.image" in run.data.tags
    history = client.get_metric_history(run.info.run_id, "valid_acc")
    assert [m.step for m in history] == [1, 2, 3]
    assert all(0 <= m.value <= 1 for m in history)
    assert "test_acc" in run.data.metrics
    assert run.data.metrics["evaluation_accuracy"] == pytest.approx(run.data.metrics["test_acc"], abs=1e-6)
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.json", "metrics.json", "evaluation.json", "profiler-report.html"} <= names
    html = open(client.download_artifacts(run.info.run_id, "profiler-report.html", str(tmp_path))).read()
    assert "Rules summary" in html


def test_an_unreachable_server_is_one_warning_and_training_goes_on(image_folders, tmp_path, caplog):
    environ = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    env = job_env(tmp_path, image_folders)
    with caplog.at_level(logging.INFO):
        assert train(env, environ) == 0
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "mlflow" in r.getMessage().lower()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "training goes on" in warnings[0].getMessage()
    assert (env.model_dir / "model.json").is_file()


def test_no_tracking_uri_no_mlflow_callback(image_folders, tmp_path):
    env = job_env(tmp_path, image_folders)
    args = parse_hyperparameters(env.hyperparameters)
    assert with_tracking([], args, env, {}) == []
    assert MlflowSettings.from_environ({"MLFLOW_TRACKING_URI": " "}) is None


def test_a_sagemaker_mlflow_arn_selects_the_sagemaker_plugin():
    """What the ARN form can be checked for without AWS: MLflow hands it to sagemaker-mlflow's store."""
    pytest.importorskip("sagemaker_mlflow")
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    arn = "arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/imgclf"
    builder = _tracking_store_registry.get_store_builder(arn)
    assert builder.__module__.startswith("sagemaker_mlflow"), builder


def test_a_search_is_a_parent_run_with_a_child_per_trial(mlflow_server, image_folders, tmp_path):
    from imgclf.hpo.search import Search, run
    from imgclf.tracking.search import TRIAL_STATE_TAG, search_runs

    environ = {"MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_EXPERIMENT_NAME": "search-test"}
    channels = {"training": image_folders / "train", "validation": image_folders / "valid"}
    fixed = {k: v for k, v in job_env(tmp_path, image_folders).hyperparameters.items() if k != "log-interval"}
    search = Search(channels, tmp_path / "search", trials=4, fixed={**fixed, "epochs": "3"}, pruner="median")
    with search_runs(search, environ) as runs:
        best = run(search, runs=runs)
    client, all_runs = runs_of(mlflow_server, "search-test")
    parents = [r for r in all_runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.params["trials"] == "4" and parent.data.params["fixed.arch"] == "resnet18"
    assert parent.data.metrics["best_valid_acc"] == pytest.approx(best["objective"]["value"])
    assert "best.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["trial 001", "trial 002", "trial 003", "trial 004"]
    for child in children:
        state = child.data.tags[TRIAL_STATE_TAG]
        assert (state, child.info.status) in (("complete", "FINISHED"), ("pruned", "KILLED")), (state, child.info)
        epochs = [m.step for m in client.get_metric_history(child.info.run_id, "valid_acc")]
        assert epochs == list(range(1, len(epochs) + 1)) and (len(epochs) == 3 or state == "pruned")
        assert "lr" in child.data.params and "batch_size" in child.data.params
