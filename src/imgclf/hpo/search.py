"""The local tuner: an Optuna search whose trials are training jobs, resumable, on one machine.

Trials search `SEARCH_SPACE` and run in this process through `train.main`, the code of
`docker run IMAGE train`.

- TPE sampler (seeded), a pruner (median or Hyperband) fed each trial's per-epoch objective through
  the training loop's callback interface; a pruned trial stops by raising from its callback.
- The study lives in `<output>/study.journal` (Optuna's journal file): a search killed at any
  point and rerun with the same command keeps its finished trials, runs the interrupted one
  again, and goes on to `trials` finished (complete or pruned) trials.
- `storage` (an RDB URL or a journal on a shared filesystem, storage.py) shares one study between
  workers on one machine or several: each runs its own trials until the study has `trials`.
- With a frozen pretrained backbone, the backbone features of every image are computed once
  (an extract-features job into `<output>/features`) and every trial builds, trains and writes
  only the head; the best trial's becomes the whole network's artifact at the end, once.
- `<output>/best.json` holds the best trial: its hyperparameters as `set_hyperparameters` takes
  them and its objective; `imgclf train --best <output>/best.json` trains the final model.

The study (storage, pruner, resume, best trial) is study.py; the command line `imgclf-tune` is cli.py.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ..callbacks import Callback
from ..names import DEFAULT_PRUNER, PRUNERS, UserError
from ..tracking.search import SearchRuns
from ..train import hyperparameters
from ..train.contract import TrainingEnvironment
from . import OBJECTIVE_METRIC, SEARCH_SPACE, TRIAL_DEFAULTS, Categorical, Continuous, search_space
from .progress import Progress
from .storage import HEARTBEAT_S, Heartbeat, surplus
from .study import STUDY_NAME, best_record, finished, open_study, requeue_interrupted, running, trial_dir

log = logging.getLogger(__name__)

BEST_FILE = "best.json"
DEFAULT_TRIAL_EPOCHS = 5


@dataclass
class Search:
    channels: dict[str, Path]  # training, validation, test: image folders
    output: Path
    trials: int = 8
    fixed: dict[str, str] = field(default_factory=dict)  # hyperparameters of every trial, as strings
    pruner: str = DEFAULT_PRUNER
    seed: int = 0
    features: bool = True  # train heads on cached features when the backbone is frozen and pretrained
    storage: str | None = None  # a study shared by several workers (storage.py); None: <output>/study.journal
    study_name: str = STUDY_NAME

    def __post_init__(self):
        if self.trials < 1:
            raise UserError(f"trials must be at least 1, got {self.trials}")
        if self.pruner not in PRUNERS:
            raise UserError(f"unknown pruner {self.pruner!r} (known: {', '.join(PRUNERS)})")
        self.fixed = {hyperparameters.EPOCHS: str(DEFAULT_TRIAL_EPOCHS), **self.fixed}
        self.args = hyperparameters.parse(self.fixed)  # a bad value fails before anything runs
        self.use_features = self.features and self.args.pretrained and self.args.freeze

    @property
    def epochs(self) -> int:
        return self.args.epochs

    def settings(self) -> dict:
        """What makes two runs the same search (a rerun must match to resume)."""
        return {"fixed": self.fixed, "pruner": self.pruner, "seed": self.seed, "features": self.use_features,
                "channels": {k: str(v) for k, v in sorted(self.channels.items())}}


def suggest(trial: optuna.Trial, space=SEARCH_SPACE, fixed=()) -> dict:
    """One point of the search space, drawn by the study's sampler; names given a fixed value are left out."""
    point = {}
    for name, dim in space.items():
        if name in fixed:
            continue
        if isinstance(dim, Categorical):
            point[name] = trial.suggest_categorical(name, list(dim.values))
        elif isinstance(dim, Continuous):
            point[name] = trial.suggest_float(name, dim.low, dim.high, log=dim.scale == "Logarithmic")
        else:
            raise TypeError(f"unknown search dimension for {name}: {dim!r}")
    if not point:
        raise UserError(f"nothing to tune: every parameter of the search space ({', '.join(space)}) is fixed")
    return point


class ReportToTrial(Callback):
    """Hands each epoch's objective to the Optuna trial and the progress display; raises
    `optuna.TrialPruned` when the pruner says so, which ends the training job."""

    def __init__(self, trial: optuna.Trial, progress: Progress, pruning: bool):
        self.trial, self.progress, self.pruning = trial, progress, pruning
        self.value: float | None = None
        self.epochs = 0

    def on_train_begin(self, job) -> None:
        self.epochs = job.args.epochs

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        self.value = float(metrics[OBJECTIVE_METRIC])
        self.progress.epoch_ends(epoch, metrics)
        self.trial.report(self.value, epoch)
        # after the last epoch there is nothing left to save
        if self.pruning and epoch < self.epochs and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")


def job_env(channels: dict[str, Path], root: Path, hps: dict[str, str]) -> TrainingEnvironment:
    return TrainingEnvironment(model_dir=root / "model", output_data_dir=root / "output" / "data",
                               output_dir=root / "output", checkpoint_dir=root / "checkpoints",
                               channels=dict(channels), hyperparameters=hps)


def run_job(env: TrainingEnvironment, callbacks=(), head_only: bool = False) -> None:
    from ..train import job as train  # torch: only where a job runs

    code = train.main(train.parse_hyperparameters(env.hyperparameters), env, callbacks=callbacks, head_only=head_only)
    if code == train.SIGTERM_EXIT:
        raise KeyboardInterrupt  # stopped by SIGTERM: the search stops as on Ctrl-C
    if code:
        raise RuntimeError(f"training stopped with exit code {code}")


def compute_features(search: Search, progress: Progress) -> Path:
    """The extract-features job of the search, once: its model dir is every trial's features channel."""
    where = search.output / "features"
    env = job_env(search.channels, where, {**search.fixed, hyperparameters.EXTRACT_FEATURES: "true",
                                           hyperparameters.LOG_INTERVAL: "0"})
    env.model_dir = where  # the feature set is the job's "model"
    progress.note(f"features: backbone features of every image into {where} (once; reused when up to date)")
    run_job(env)
    return where


def run(search: Search, progress: Progress | None = None, callbacks=(), runs: SearchRuns | None = None) -> dict:
    """Run (or resume) the search; returns best.json's content. `callbacks` (training callbacks)
    join every trial's job, beside the one that reports to Optuna; `runs` logs it to MLflow."""
    runs = runs or SearchRuns(None, {}, "")
    study = open_study(search)
    progress = progress or Progress(search.trials, metric=OBJECTIVE_METRIC, epochs=search.epochs)
    progress.done = len(finished(study))
    requeue_interrupted(study, progress)
    features_channel = compute_features(search, progress) if search.use_features else None
    best = best_record(study, search.fixed, search.output)
    progress.set_best(best and best["objective"]["value"], best and best["trial"])
    if progress.done:
        progress.note(f"resuming: {progress.done} of {search.trials} trials already finished")
    while (trial := next_trial(study, search, progress)) is not None:
        try:
            with Heartbeat(trial):
                state, value = run_trial(search, study, trial, progress, features_channel,
                                         (*runs.trial(trial.number), *callbacks))
        except Exception:
            runs.trial_ended(trial.number, "failed", None)
            raise
        best = best_record(study, search.fixed, search.output)
        progress.set_best(best and best["objective"]["value"], best and best["trial"])
        progress.trial_ends(state, value)
        runs.trial_ended(trial.number, state, value)
        _keep_only_best_model(search, study)
    progress.finish()
    best = best_record(study, search.fixed, search.output)  # other workers' trials count too
    runs.finish(best)
    if best is None:
        raise UserError(f"no trial completed: all {search.trials} were pruned or failed")
    if features_channel:
        complete_best_model(search, best, features_channel)
    (search.output / BEST_FILE).write_text(json.dumps(best, indent=2) + "\n")
    return best


def complete_best_model(search: Search, best: dict, features_channel: Path) -> None:
    """The best trial's model dir, when this worker ran it, from its head alone to the whole network's
    artifact (model.pt, model.json, and the evaluation a training job writes, on the search's images):
    once, whatever the number of trials."""
    from ..train import features  # torch: only where a network is built

    model_dir = search.output / best["model"]
    if (model_dir / features.HEAD_FILE).is_file():
        features.complete_artifact(model_dir, features.load(features_channel), search.channels.get("pretrained"),
                                   job_env(search.channels, model_dir.parent, {}))


def next_trial(study: optuna.Study, search: Search, progress: Progress) -> optuna.Trial | None:
    """The next trial for this worker; None once the study has `trials` finished. While other
    workers run the last ones it waits: one may be interrupted and need running again."""
    while len(finished(study)) < search.trials:
        requeue_interrupted(study, progress)
        if len(finished(study)) + len(running(study)) >= search.trials:
            time.sleep(HEARTBEAT_S / 2)
            continue
        trial = study.ask()
        if not surplus(study, trial, search.trials):
            progress.done = len(finished(study))  # other workers' trials included
            return trial
        study.tell(trial, state=TrialState.FAIL)  # asked beside another worker, one too many: never run
    return None


def run_trial(search: Search, study: optuna.Study, trial: optuna.Trial, progress: Progress,
              features_channel: Path | None, callbacks=()) -> tuple[str, float | None]:
    """One trial's training job, told to the study; ("complete" or "pruned", its last objective)."""
    point = suggest(trial, space=search_space(search.fixed), fixed=search.fixed)
    progress.trial_begins(trial.number + 1, point)
    # an interrupted trial runs again from its start: its checkpoints would be written for nothing
    hps = {**TRIAL_DEFAULTS, **search.fixed, **{k: str(v) for k, v in point.items()}, hyperparameters.LOG_INTERVAL: "0",
           hyperparameters.CHECKPOINT: "false"}
    channels = dict(search.channels)
    if features_channel:  # the search computed them from its images: the trial needs them alone
        hps[hyperparameters.FEATURES] = "true"
        channels = {"features": features_channel}
    folder = trial_dir(search.output, trial.number)
    shutil.rmtree(folder, ignore_errors=True)
    reporter = ReportToTrial(trial, progress, pruning=search.pruner != "none")
    try:
        # the observers first: they see an epoch before the reporter ends a pruned trial
        run_job(job_env(channels, folder, hps), callbacks=[*callbacks, reporter], head_only=bool(features_channel))
        state = "complete"
    except optuna.TrialPruned:
        state = "pruned"
    except Exception:
        study.tell(trial, state=TrialState.FAIL)
        raise  # Ctrl-C and SIGTERM leave it running: the next run of the search runs it again
    if state == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    elif reporter.value is None:
        study.tell(trial, state=TrialState.FAIL)
        raise UserError(f"trial {trial.number + 1} reported no {OBJECTIVE_METRIC}")
    else:
        study.tell(trial, reporter.value)
    return state, reporter.value


def _keep_only_best_model(search: Search, study: optuna.Study) -> None:
    """Keep the best trial's model dir only (a whole network, or on cached features its head)."""
    try:
        keep = study.best_trial.number
    except ValueError:
        keep = None
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.number != keep:
            shutil.rmtree(trial_dir(search.output, t.number) / "model", ignore_errors=True)
