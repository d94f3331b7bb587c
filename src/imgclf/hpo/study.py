"""The Optuna study behind a local search: journal storage in the output folder, sampler and
pruner, resuming after a kill, and the best trial as best.json holds it."""
from __future__ import annotations

import json
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from .. import hyperparameters
from ..names import PRUNERS, UserError
from . import OBJECTIVE_METRIC, OBJECTIVE_TYPE, TRIAL_ONLY

STUDY_NAME = "imgclf"
STUDY_FILE = "study.journal"


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


def _storage(output: Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(Path(output) / STUDY_FILE)))


def open_study(search) -> optuna.Study:
    """The study of `search` (a `search.Search`), created or resumed; a rerun with other settings is refused."""
    search.output.mkdir(parents=True, exist_ok=True)
    direction = "maximize" if OBJECTIVE_TYPE == "Maximize" else "minimize"
    study = optuna.create_study(study_name=STUDY_NAME, storage=_storage(search.output), direction=direction,
                                load_if_exists=True, sampler=optuna.samplers.TPESampler(seed=search.seed),
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


def requeue_interrupted(study: optuna.Study, progress) -> None:
    """Trials left running by a killed search: marked failed, and their parameters queued to run again."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
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
    hps = {k: v for k, v in {**fixed, **top.params}.items() if k not in TRIAL_ONLY}
    return {"hyperparameters": hyperparameters.typed(hps),
            "objective": {"metric": OBJECTIVE_METRIC, "type": OBJECTIVE_TYPE, "value": top.value},
            "trial": top.number + 1, "model": str((trial_dir(output, top.number) / "model").relative_to(output))}


def summary(study_dir: Path) -> list[dict]:
    """Every trial of the search in `study_dir`: number, state, params, value, epochs reported."""
    study = optuna.load_study(study_name=STUDY_NAME, storage=_storage(study_dir))
    return [{"trial": t.number + 1, "state": t.state.name.lower(), "params": t.params, "value": t.value,
             "epochs": len(t.intermediate_values)} for t in study.get_trials(deepcopy=False)]
