"""The local tuner: an Optuna search whose trials are training jobs, resumable, on one machine.

Trials search `SEARCH_SPACE` and run in this process through `train.main`, the code of
`docker run IMAGE train`.

- TPE sampler (seeded), a pruner (median or Hyperband) fed each trial's per-epoch objective through
  the training loop's callback interface; a pruned trial stops by raising from its callback.
- The study lives in `<output>/study.journal` (Optuna's journal file): a search killed at any
  point and rerun with the same command keeps its finished trials, runs the interrupted one
  again, and goes on to `trials` finished (complete or pruned) trials.
- With a frozen pretrained backbone, the backbone features of every image are computed once
  (an extract-features job into `<output>/features`) and every trial trains only the head.
- `<output>/best.json` holds the best trial: its hyperparameters as `set_hyperparameters` takes
  them and its objective; `imgclf train --best <output>/best.json` trains the final model.

    imgclf-tune --data ./data --output ./tuning --trials 8 --epochs 3 --arch efficientnet_lite0
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from .. import hyperparameters
from ..callbacks import Callback
from ..contract import TrainingEnvironment, UserError
from ..tracking.search import SearchRuns, search_runs
from . import (FINAL_EPOCHS, OBJECTIVE_METRIC, OBJECTIVE_TYPE, SEARCH_SPACE, TRIAL_DEFAULTS, TRIAL_ONLY, Categorical,
               Continuous)
from .progress import Progress

log = logging.getLogger(__name__)

STUDY_NAME = "imgclf"
STUDY_FILE = "study.journal"
BEST_FILE = "best.json"
PRUNERS = ("median", "hyperband", "none")
DEFAULT_TRIAL_EPOCHS = 5


@dataclass
class Search:
    channels: dict[str, Path]  # training, validation, test: image folders
    output: Path
    trials: int = 8
    fixed: dict[str, str] = field(default_factory=dict)  # hyperparameters of every trial, as strings
    pruner: str = "median"
    seed: int = 0
    features: bool = True  # train heads on cached features when the backbone is frozen and pretrained

    def __post_init__(self):
        if self.trials < 1:
            raise UserError(f"trials must be at least 1, got {self.trials}")
        if self.pruner not in PRUNERS:
            raise UserError(f"unknown pruner {self.pruner!r} (known: {', '.join(PRUNERS)})")
        self.fixed = {"epochs": str(DEFAULT_TRIAL_EPOCHS), **self.fixed}
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


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":  # stop a trial whose epoch is below the median of earlier trials at that epoch
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, epochs), reduction_factor=3)
    return optuna.pruners.NopPruner()


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


def run_job(env: TrainingEnvironment, callbacks=()) -> None:
    from .. import train  # torch: only where a job runs

    code = train.main(train.parse_hyperparameters(env.hyperparameters), env, callbacks=callbacks)
    if code == train.SIGTERM_EXIT:
        raise KeyboardInterrupt  # stopped by SIGTERM: the search stops as on Ctrl-C
    if code:
        raise RuntimeError(f"training stopped with exit code {code}")


def open_study(search: Search) -> optuna.Study:
    search.output.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(search.output / STUDY_FILE)))
    direction = "maximize" if OBJECTIVE_TYPE == "Maximize" else "minimize"
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, direction=direction, load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=search.seed),
                                pruner=make_pruner(search.pruner, search.epochs))
    settings = json.loads(json.dumps(search.settings()))
    saved = study.user_attrs.get("settings")
    if saved is None:
        study.set_user_attr("settings", settings)
    elif saved != settings:
        changed = sorted(k for k in settings if saved.get(k) != settings[k])
        raise UserError(f"{search.output} holds a search with other settings ({', '.join(changed)}): "
                        "rerun it with the same command, or give another --output")
    return study


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def requeue_interrupted(study: optuna.Study, progress: Progress) -> None:
    """Trials left running by a killed search: marked failed, and their parameters queued to run again."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
        progress.note(f"trial {t.number + 1} was interrupted: running it again")


def best_record(study: optuna.Study, search: Search) -> dict | None:
    try:
        top = study.best_trial
    except ValueError:  # no complete trial
        return None
    hps = {k: v for k, v in {**search.fixed, **top.params}.items() if k not in TRIAL_ONLY}
    return {"hyperparameters": hyperparameters.typed(hps),
            "objective": {"metric": OBJECTIVE_METRIC, "type": OBJECTIVE_TYPE, "value": top.value},
            "trial": top.number + 1, "model": str((trial_dir(search, top.number) / "model").relative_to(search.output))}


def trial_dir(search: Search, number: int) -> Path:
    return search.output / "trials" / f"{number + 1:03d}"


def compute_features(search: Search, progress: Progress) -> Path:
    """The extract-features job of the search, once: its model dir is every trial's features channel."""
    where = search.output / "features"
    env = job_env(search.channels, where, {**search.fixed, "extract-features": "true", "log-interval": "0"})
    env.model_dir = where  # the feature set is the job's "model"
    progress.note(f"features: backbone features of every image into {where} (once; reused when up to date)")
    run_job(env)
    return where


def run(search: Search, progress: Progress | None = None, runs: SearchRuns | None = None) -> dict:
    """Run (or resume) the search; returns best.json's content. `runs` logs it to MLflow."""
    runs = runs or SearchRuns(None, {}, "")
    study = open_study(search)
    progress = progress or Progress(search.trials, metric=OBJECTIVE_METRIC, epochs=search.epochs)
    progress.done = len(finished(study))
    requeue_interrupted(study, progress)
    features_channel = compute_features(search, progress) if search.use_features else None
    best = best_record(study, search)
    progress.set_best(best and best["objective"]["value"], best and best["trial"])
    if progress.done:
        progress.note(f"resuming: {progress.done} of {search.trials} trials already finished")
    while len(finished(study)) < search.trials:
        trial = study.ask()
        point = suggest(trial, fixed=search.fixed)
        progress.trial_begins(trial.number + 1, point)
        hps = {**TRIAL_DEFAULTS, **search.fixed, **{k: str(v) for k, v in point.items()}, "log-interval": "0"}
        channels = dict(search.channels)
        if features_channel:
            hps["features"] = "true"
            channels["features"] = features_channel
        folder = trial_dir(search, trial.number)
        shutil.rmtree(folder, ignore_errors=True)
        reporter = ReportToTrial(trial, progress, pruning=search.pruner != "none")
        try:
            run_job(job_env(channels, folder, hps), callbacks=[*runs.trial(trial.number), reporter])
            state = "complete"
        except optuna.TrialPruned:
            state = "pruned"
        except Exception:
            study.tell(trial, state=TrialState.FAIL)
            runs.trial_ended(trial.number, "failed", None)
            raise  # Ctrl-C and SIGTERM leave it running: the next run of the search runs it again
        finally:
            shutil.rmtree(folder / "checkpoints", ignore_errors=True)
        if state == "pruned":
            study.tell(trial, state=TrialState.PRUNED)
        elif reporter.value is None:
            study.tell(trial, state=TrialState.FAIL)
            raise UserError(f"trial {trial.number + 1} reported no {OBJECTIVE_METRIC}")
        else:
            study.tell(trial, reporter.value)
        best = best_record(study, search)
        progress.set_best(best and best["objective"]["value"], best and best["trial"])
        progress.trial_ends(state, reporter.value)
        runs.trial_ended(trial.number, state, reporter.value)
        _keep_only_best_model(search, study)
    progress.finish()
    runs.finish(best)
    if best is None:
        raise UserError(f"no trial completed: all {search.trials} were pruned or failed")
    (search.output / BEST_FILE).write_text(json.dumps(best, indent=2) + "\n")
    return best


def _keep_only_best_model(search: Search, study: optuna.Study) -> None:
    """Each trial's artifact is a whole network: keep the best trial's only."""
    try:
        keep = study.best_trial.number
    except ValueError:
        keep = None
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.number != keep:
            shutil.rmtree(trial_dir(search, t.number) / "model", ignore_errors=True)


def summary(study_dir: Path) -> list[dict]:
    """Every trial of the search in `study_dir`: number, state, params, value, epochs reported."""
    storage = JournalStorage(JournalFileBackend(str(Path(study_dir) / STUDY_FILE)))
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    return [{"trial": t.number + 1, "state": t.state.name.lower(), "params": t.params, "value": t.value,
             "epochs": len(t.intermediate_values)} for t in study.get_trials(deepcopy=False)]


# ---------------------------------------------------------------------------------------------
# command line


def get_args_parser() -> argparse.ArgumentParser:
    from ..launch.datasets import SPLIT_CHANNELS

    p = argparse.ArgumentParser(prog="imgclf-tune", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--data", required=True, help="data root with train/ [valid/ test/] (or training/ validation/ "
                                                 f"test/); folders: {', '.join(SPLIT_CHANNELS)}")
    p.add_argument("--output", default="imgclf-tuning", help="study, features, trials and best.json; rerunning "
                                                             "the same command here resumes the search")
    p.add_argument("--trials", type=int, default=8, help="finished (complete or pruned) trials to run")
    p.add_argument("--pruner", default="median", choices=PRUNERS)
    p.add_argument("--sampler-seed", type=int, default=0, help="TPE sampler seed")
    p.add_argument("--no-features", dest="features", action="store_false",
                   help="push every image through the backbone in every trial, with augmentation")
    p.add_argument("--verbose", action="store_true", help="the training jobs' own log lines too")
    hps = p.add_argument_group(f"hyperparameters fixed in every trial (trial epochs default to {DEFAULT_TRIAL_EPOCHS})")
    for hp in hyperparameters.HYPERPARAMETERS:
        if hp.name not in TRIAL_ONLY:
            hps.add_argument(f"--{hp.name}", dest="hp_" + hp.dest, metavar="VALUE", help=hp.help or None)
    return p


def cli(argv: list[str] | None = None) -> None:
    from ..launch.datasets import SPLIT_CHANNELS, check_layout

    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    fixed = {hp.name: getattr(args, "hp_" + hp.dest) for hp in hyperparameters.HYPERPARAMETERS
             if getattr(args, "hp_" + hp.dest, None) is not None}
    try:
        root = Path(args.data)
        channels = {SPLIT_CHANNELS[name]: (root / name).resolve() for name in check_layout(root)}
        search = Search(channels, Path(args.output).resolve(), trials=args.trials, fixed=fixed, pruner=args.pruner,
                        seed=args.sampler_seed, features=args.features)
        with search_runs(search) as runs:
            best = run(search, runs=runs)
    except UserError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(130)
    print(f"best trial {best['trial']}: {OBJECTIVE_METRIC}={best['objective']['value']:.4f}")
    print(f"estimator.set_hyperparameters(**{json.dumps(best['hyperparameters'])})")
    print(f"written to {search.output / BEST_FILE}; final model: imgclf train --best {search.output / BEST_FILE} "
          f"--data ... ({FINAL_EPOCHS} epochs unless --epochs)")


if __name__ == "__main__":
    cli()
