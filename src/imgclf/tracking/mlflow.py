"""The MLflow run of a training job: a callback that logs, from the main process only, the
hyperparameters as params, each epoch's metric line with the epoch as step, the test metrics,
model.json, metrics.json and the profiler report as artifacts, and ends the run as the job ended
(FINISHED; KILLED by SIGTERM; FAILED with the failure line as the tag `imgclf.failure`).

A server that cannot be reached, or any failure of MLflow, is one warning (callbacks.FailSafeCallback):
the run stops logging and training goes on.
"""
from __future__ import annotations

import functools
import logging
import time

from ..callbacks import FailSafeCallback, fail_safe
from .settings import MlflowSettings

log = logging.getLogger("imgclf.tracking")

PROBE_TIMEOUT_S = 5  # MLflow's own retries wait minutes for a server that is not there
HEADER_LOGGER = "mlflow.tracking.request_header.registry"
PARENT_TAG = "mlflow.parentRunId"
FAILURE_TAG = "imgclf.failure"


def connect(settings: MlflowSettings):
    """A client of the tracking server, once an HTTP server answered at all (any status will do:
    a managed server may want credentials for /health)."""
    from mlflow.tracking import MlflowClient

    uri = settings.tracking_uri
    if uri.startswith(("http://", "https://")):
        import requests

        requests.get(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S)
    if not uri.startswith("arn:"):
        _quiet_sagemaker_headers()
    return MlflowClient(tracking_uri=uri)


def _from_sagemaker_plugin(record: logging.LogRecord) -> bool:
    error = record.args[0] if isinstance(record.args, tuple) and record.args else None
    tb = getattr(error, "__traceback__", None)
    while tb is not None:
        if "sagemaker_mlflow" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


@functools.cache
def _quiet_sagemaker_headers() -> None:
    """sagemaker-mlflow's request header provider reads every tracking URI as an ARN: with a server's
    URL it fails on each request and MLflow logs a warning each time. Those warnings are dropped."""
    logging.getLogger(HEADER_LOGGER).addFilter(lambda record: not _from_sagemaker_plugin(record))


def create_run(client, settings: MlflowSettings, run_name: str | None = None, parent_run_id: str | None = None,
               tags: dict | None = None) -> str:
    """A new run in the settings' experiment (created when missing); its id."""
    experiment = client.get_experiment_by_name(settings.experiment)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        try:
            experiment_id = client.create_experiment(settings.experiment)
        except Exception:  # created meanwhile by a parallel job
            experiment_id = client.get_experiment_by_name(settings.experiment).experiment_id
    tags = {**settings.tags, **(tags or {})}
    if parent_run_id or settings.parent_run_id:
        tags[PARENT_TAG] = parent_run_id or settings.parent_run_id
    return client.create_run(experiment_id, run_name=run_name or settings.run_name, tags=tags).info.run_id


def log_metrics(client, run_id: str, metrics: dict, step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()
                                      if k != "epoch" and isinstance(v, (int, float))])


def warn(what: str, error: Exception) -> None:
    first = str(error).splitlines()[0][:300] if str(error) else ""
    log.warning("MLflow: %s failed, tracking is off for this job (training goes on): %s: %s", what,
                type(error).__name__, first)


class MlflowRun(FailSafeCallback):
    """One run per job; `parent_run_id` and `run_name` make it a tuning trial's child run."""

    def __init__(self, settings: MlflowSettings, run_name: str | None = None, parent_run_id: str | None = None,
                 end_run: bool = True):
        self.settings, self.run_name, self.parent_run_id = settings, run_name, parent_run_id
        self.what = f"MLflow tracking to {settings.tracking_uri}"
        self.end_run = end_run  # False: whoever started the job ends the run (a search marks pruned trials)
        self.client = None
        self.run_id: str | None = None
        self._env = None
        self._epoch = 0

    @fail_safe
    def on_train_begin(self, job) -> None:
        if not job.topology.is_main:
            self.off = True  # one run per job: the main process logs it
            return
        self._env = job.env
        self.client = connect(self.settings)
        self.run_id = create_run(self.client, self.settings, self.run_name, self.parent_run_id)
        self._log_params(vars(job.args))
        log.info("MLflow run %s in experiment %s at %s", self.run_id, self.settings.experiment,
                 self.settings.tracking_uri)

    def _log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in sorted(params.items())])

    @fail_safe
    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        self._epoch = epoch
        log_metrics(self.client, self.run_id, metrics, step=epoch)

    @fail_safe
    def on_evaluate_end(self, split: str, metrics: dict) -> None:
        if split == "test":
            log_metrics(self.client, self.run_id, metrics, step=self._epoch)

    @fail_safe
    def on_train_end(self, history: list[dict]) -> None:
        self._log_evaluation()
        self._log_artifacts()
        if self.end_run:
            self.client.set_terminated(self.run_id, "FINISHED")

    @fail_safe
    def on_train_abort(self, reason: str) -> None:
        self.client.set_tag(self.run_id, FAILURE_TAG, reason[:5000])
        self._log_artifacts()
        if self.end_run:
            self.client.set_terminated(self.run_id, "KILLED" if "SIGTERM" in reason else "FAILED")

    def _log_evaluation(self) -> None:
        """evaluation.json's headline figures, as `evaluation_<name>` metrics (the file is an artifact)."""
        from ..artifact.baseline import read_evaluation

        result = read_evaluation(self._env.output_data_dir)
        if result is not None:
            headline = result["multiclass_classification_metrics"]
            log_metrics(self.client, self.run_id, {f"evaluation_{k}": v["value"] for k, v in headline.items()
                                                   if isinstance(v, dict) and "value" in v}, step=self._epoch)

    def _log_artifacts(self) -> None:
        from ..artifact.baseline import EVALUATION_FILE
        from ..debug.report import REPORT_FILE
        from ..names import CARD_FILE

        env = self._env
        for path in (env.model_dir / CARD_FILE, env.output_data_dir / "metrics.json",
                     env.output_data_dir / EVALUATION_FILE, env.output_data_dir / REPORT_FILE):
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
