"""The Optuna study behind a local search: journal storage in the output folder, sampler and
pruner, resuming after a kill, and the best trial as best.json holds it."""
from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ..names import PRUNERS, UserError
from . import OBJECTIVE_METRIC, OBJECTIVE_TYPE, best_hyperparameters
from .storage import HOST, is_orphaned, open_storage

STUDY_NAME = "imgclf"


# one builder per name of names.PRUNERS (a test checks that they match)
PRUNER_BUILDERS = {
    # stop a trial whose epoch is below the median of earlier trials at that epoch
    "median": lambda epochs: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
    "hyperband": lambda epochs: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, epochs),
                                                               reduction_factor=3),
    "none": lambda epochs: optuna.pruners.NopPruner(),
}


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    if name not in PRUNER_BUILDERS:
        raise UserError(f"unknown pruner {name!r} (known: {', '.join(PRUNERS)})")
    return PRUNER_BUILDERS[name](epochs)


def open_study(search) -> optuna.Study:
    """The study of `search` (a `search.Search`), created or resumed; a rerun with other settings is refused."""
    search.output.mkdir(parents=True, exist_ok=True)
    storage = open_storage(search.storage, search.output)
    direction = "maximize" if OBJECTIVE_TYPE == "Maximize" else "minimize"
    options = dict(study_name=search.study_name, storage=storage, direction=direction, load_if_exists=True,
                   sampler=optuna.samplers.TPESampler(seed=sampler_seed(search)),
                   pruner=make_pruner(search.pruner, search.epochs))
    try:
        study = optuna.create_study(**options)
    except optuna.exceptions.DuplicatedStudyError:  # another worker created it at the same moment
        study = optuna.create_study(**options)
    settings = json.loads(json.dumps(search.settings()))
    saved = study.user_attrs.get("settings")
    if saved is None:
        study.set_user_attr("settings", settings)
    elif saved != settings:
        changed = sorted(k for k in settings if saved.get(k) != settings[k])
        raise UserError(f"{search.storage or search.output} holds a search with other settings "
                        f"({', '.join(changed)}): rerun it with the same command, or give another "
                        f"{'--study' if search.storage else '--output'}")
    return study


def sampler_seed(search) -> int:
    """The search's seed; each worker of a shared study its own, or all would draw the same points."""
    if search.storage is None:
        return search.seed
    return (search.seed + zlib.crc32(f"{HOST}:{os.getpid()}".encode())) % 2**32


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def running(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def requeue_interrupted(study: optuna.Study, progress) -> None:
    """Trials whose worker is gone (a killed search; storage.py says how that is told): marked
    failed, and their parameters queued to run again."""
    for t in running(study):
        if not is_orphaned(t):
            continue  # another worker of a shared study runs it
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError):  # another worker took it first
            continue
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
        progress.note(f"trial {t.number + 1} was interrupted: running it again")


def trial_dir(output: Path, number: int) -> Path:
    return Path(output) / "trials" / f"{number + 1:03d}"


def best_record(study: optuna.Study, fixed: dict, output: Path) -> dict | None:
    """best.json's content for the best complete trial so far; None before one completes."""
    try:
        top = study.best_trial
    except ValueError:  # no complete trial
        return None
    return {"hyperparameters": best_hyperparameters({**fixed, **top.params}),
            "objective": {"metric": OBJECTIVE_METRIC, "type": OBJECTIVE_TYPE, "value": top.value},
            "trial": top.number + 1, "model": str((trial_dir(output, top.number) / "model").relative_to(output))}


def summary(study_dir: Path, storage: str | None = None, study_name: str = STUDY_NAME) -> list[dict]:
    """Every trial of the search in `study_dir` (or in the shared `storage`): number, state, params,
    value, epochs reported."""
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage, Path(study_dir)))
    return [{"trial": t.number + 1, "state": t.state.name.lower(), "params": t.params, "value": t.value,
             "epochs": len(t.intermediate_values)} for t in study.get_trials(deepcopy=False)]
