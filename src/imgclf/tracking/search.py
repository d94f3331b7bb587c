"""A local tuning search (imgclf.hpo.search) in MLflow: one parent run per search, holding the
fixed hyperparameters, the search's settings and the best trial's objective and best.json; one
child run per trial (hyperparameters, metrics per epoch), FINISHED when complete, KILLED with the
tag `imgclf.trial_state=pruned` when pruned, FAILED when it failed.

    with search_runs(search) as runs:       # nothing happens without MLFLOW_TRACKING_URI
        ... callbacks=[*runs.trial(number), reporter] ...
        runs.trial_ended(number, "complete", value)
        runs.finish(best)
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ..callbacks import Callback
from .mlflow import MlflowRun, connect, create_run, warn
from .settings import MlflowSettings

log = logging.getLogger("imgclf.tracking")

TRIAL_STATE_TAG = "imgclf.trial_state"
# an Optuna trial's end as an MLflow run status
RUN_STATUS = {"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}


class SearchRuns:
    def __init__(self, settings: MlflowSettings | None, params: Mapping[str, object], name: str):
        self.settings, self.params, self.name = settings, dict(params), name
        self.client = None
        self.run_id: str | None = None
        self._trials: dict[int, MlflowRun] = {}

    def __enter__(self) -> SearchRuns:
        if self.settings is None:
            return self
        try:
            from mlflow.entities import Param

            self.client = connect(self.settings)
            self.run_id = create_run(self.client, self.settings, run_name=self.name, tags={"imgclf.kind": "search"})
            self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in sorted(self.params.items())])
            log.info("MLflow parent run %s of the search in experiment %s", self.run_id, self.settings.experiment)
        except Exception as e:
            warn(f"reaching {self.settings.tracking_uri}", e)
            self.client = None
        return self

    def __exit__(self, kind, error, traceback) -> None:
        status = "FINISHED" if kind is None else "KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED"
        self._call("ending the search's run", self.client and self.client.set_terminated, self.run_id, status)

    def trial(self, number: int) -> list[Callback]:
        """The callbacks that log trial `number` (from 0) as a child run: none when tracking is off."""
        if self.client is None:
            return []
        run = MlflowRun(self.settings, run_name=f"trial {number + 1:03d}", parent_run_id=self.run_id, end_run=False)
        self._trials[number] = run
        return [run]

    def trial_ended(self, number: int, state: str, value: float | None) -> None:
        """Marks trial `number`'s run: complete, pruned or failed, with its objective."""
        run = self._trials.pop(number, None)
        if run is None or run.run_id is None:
            return  # its run was never created
        self._call("marking a trial", self._mark, run.run_id, state, value)

    def finish(self, best: dict | None) -> None:
        """The best trial's objective, trial number and best.json on the parent run."""
        if best is not None:
            self._call("logging the best trial", self._log_best, best)

    def _mark(self, run_id: str, state: str, value: float | None) -> None:
        self.client.set_tag(run_id, TRIAL_STATE_TAG, state)
        if value is not None:
            self.client.log_metric(run_id, "objective", value)
        self.client.set_terminated(run_id, RUN_STATUS[state])

    def _log_best(self, best: dict) -> None:
        objective = best["objective"]
        self.client.log_metric(self.run_id, f"best_{objective['metric']}", objective["value"])
        self.client.set_tag(self.run_id, "imgclf.best_trial", str(best["trial"]))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "best.json"
            path.write_text(json.dumps(best, indent=2) + "\n")
            self.client.log_artifact(self.run_id, str(path))

    def _call(self, what: str, method, *args) -> None:
        if self.client is None or method is None:
            return
        try:
            method(*args)
        except Exception as e:
            warn(what, e)
            self.client = None


def search_runs(search, environ: Mapping[str, str] = os.environ) -> SearchRuns:
    """The MLflow runs of `search` (hpo.search.Search), as the environment asks."""
    params = {**{f"fixed.{k}": v for k, v in search.fixed.items()}, "trials": search.trials,
              "pruner": search.pruner, "sampler_seed": search.seed, "features": search.use_features}
    return SearchRuns(MlflowSettings.from_environ(environ), params, name=f"search {search.output.name}")
