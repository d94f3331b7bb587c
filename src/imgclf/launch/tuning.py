"""Hyperparameter tuning: the package's search space as a SageMaker tuning job, its best trial as
best.json, and the local tuner (`imgclf-tune`, Optuna) run in one container of the image.

The ranges come from `imgclf.hpo.search_space` (the recipe's space), the objective from `imgclf.hpo.OBJECTIVE_METRIC`
read by the regex of `imgclf.metrics.metric_definitions`: one place for each. Trials of a frozen
backbone can take a `features` channel (what `imgclf features` computes once) and train only
the head. Nothing here imports torch.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from sagemaker.tuner import (
    CategoricalParameter,
    ContinuousParameter,
    HyperbandStrategyConfig,
    HyperparameterTuner,
    StrategyConfig,
    WarmStartConfig,
    WarmStartTypes,
)

from ..hpo import (
    OBJECTIVE_METRIC,
    OBJECTIVE_TYPE,
    TRIAL_DEFAULTS,
    TRIAL_ONLY,
    Categorical,
    Continuous,
    best_hyperparameters,
    search_space,
)
from ..names import DEFAULT_PRUNER, SAGEMAKER_BASE_DIR, UserError
from ..train.contract import RESERVED_PREFIXES
from ..train.hyperparameters import BY_NAME, EPOCHS, typed
from ..train.metrics import metric_definitions
from .session import Target
from .training import JobSpec, estimator

STRATEGIES = ("Bayesian", "Random", "Hyperband", "Grid")
WARM_START_TYPES = tuple(t.value for t in WarmStartTypes)  # IdenticalDataAndAlgorithm, TransferLearning


def parameter_ranges(space=None, fixed=()) -> dict:
    """SageMaker parameter ranges for every name in `space` (default: the fixed recipe's) not given a fixed value."""
    space = space or search_space(dict(fixed))
    ranges = {}
    for name, dim in space.items():
        if name in fixed:
            continue
        if isinstance(dim, Continuous):
            ranges[name] = ContinuousParameter(dim.low, dim.high, scaling_type=dim.scale)
        elif isinstance(dim, Categorical):
            ranges[name] = CategoricalParameter(list(dim.values))
        else:
            raise TypeError(f"unknown search dimension for {name}: {dim!r}")
    if not ranges:
        raise UserError(f"nothing to tune: every parameter of the search space ({', '.join(space)}) is fixed")
    return ranges


def tuner(spec: JobSpec, target: Target, *, max_jobs: int, max_parallel_jobs: int, strategy: str = "Bayesian",
          early_stopping: str | None = None, warm_start: list[str] = (), warm_start_type: str = WARM_START_TYPES[0],
          seed: int | None = None) -> HyperparameterTuner:
    """A tuner over the search space; hyperparameters in `spec` stay fixed in every trial.

    Hyperband takes its resources from `epochs` (1 up to the trials' epochs) and stops trials
    itself, so SageMaker's early stopping is off with it (Auto by default otherwise).
    `warm_start` names earlier tuning jobs whose trials inform this one's.
    """
    if strategy not in STRATEGIES:
        raise UserError(f"unknown strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
    strategy_config = None
    if strategy == "Hyperband":
        if early_stopping not in (None, "Off"):
            raise UserError("Hyperband stops trials itself: leave early stopping Off with it")
        early_stopping = "Off"
        epochs = int(spec.hyperparameters.get(EPOCHS, BY_NAME[EPOCHS].default))
        strategy_config = StrategyConfig(HyperbandStrategyConfig(max_resource=epochs, min_resource=1))
    warm_start_config = None
    if warm_start:
        if warm_start_type not in WARM_START_TYPES:
            raise UserError(f"unknown warm start type {warm_start_type!r} (known: {', '.join(WARM_START_TYPES)})")
        if len(warm_start) > 5:
            raise UserError(f"a tuning job warm-starts from at most 5 parent jobs, got {len(warm_start)}")
        warm_start_config = WarmStartConfig(WarmStartTypes(warm_start_type), parents=set(warm_start))
    trial_spec = replace(spec, hyperparameters={**TRIAL_DEFAULTS, **spec.hyperparameters})
    return HyperparameterTuner(
        estimator(trial_spec, target),
        objective_metric_name=OBJECTIVE_METRIC,
        hyperparameter_ranges=parameter_ranges(fixed=spec.hyperparameters),
        metric_definitions=metric_definitions(),  # all of them, so every trial charts them; one is the objective
        objective_type=OBJECTIVE_TYPE,
        strategy=strategy,
        strategy_config=strategy_config,
        max_jobs=max_jobs,
        max_parallel_jobs=max_parallel_jobs,
        early_stopping_type=early_stopping or "Auto",
        warm_start_config=warm_start_config,
        random_seed=seed,
        base_tuning_job_name=spec.base_job_name,
    )


def decode_hyperparameters(raw: dict[str, str]) -> dict:
    """A job's hyperparameters as `Estimator.set_hyperparameters(**...)` takes them.

    SageMaker's own keys are dropped and values typed by the training job's table: the tuner's
    JSON-quoted `"\\"64\\""` and a plain `"64"` both become 64, `"0.0173"` becomes 0.0173,
    `"resnet50"` stays a string.
    """
    return typed({name: value for name, value in raw.items() if not name.startswith(RESERVED_PREFIXES)})


@dataclass
class Best:
    job_name: str
    objective: float | None
    hyperparameters: dict

    def to_json(self) -> dict:
        """best.json: what `imgclf train --best` reads (the local tuner writes the same form)."""
        hps = best_hyperparameters(self.hyperparameters)
        return {"hyperparameters": hps, "objective": {"metric": OBJECTIVE_METRIC, "type": OBJECTIVE_TYPE,
                                                      "value": self.objective}, "training_job": self.job_name}

    def describe(self) -> str:
        hps = self.to_json()["hyperparameters"]
        args = " ".join(f"--{k} {json.dumps(v) if isinstance(v, bool) else v}" for k, v in hps.items())
        return (f"best training job: {self.job_name}\n"
                f"{OBJECTIVE_METRIC}: {self.objective}\n"
                f"estimator.set_hyperparameters(**{json.dumps(hps)})\n"
                f"imgclf train {args}")


def best(tuning_job_name: str, target: Target) -> Best:
    """The best trial of a tuning job, with all its hyperparameters (tuned and fixed)."""
    client = target.session.sagemaker_client
    described = client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=tuning_job_name)
    if "BestTrainingJob" not in described:
        raise UserError(f"tuning job {tuning_job_name} has no completed trial yet "
                        f"(status {described.get('HyperParameterTuningJobStatus')})")
    top = described["BestTrainingJob"]
    job = client.describe_training_job(TrainingJobName=top["TrainingJobName"])
    objective = top.get("FinalHyperParameterTuningJobObjectiveMetric", {}).get("Value")
    return Best(top["TrainingJobName"], objective, decode_hyperparameters(job.get("HyperParameters", {})))


def write_best(best: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(best, indent=2) + "\n")
    return path


def read_best(path: Path) -> dict:
    """The hyperparameters of a best.json (the local tuner's or `imgclf tune`'s), typed."""
    try:
        best = json.loads(Path(path).read_text())
        hps = best["hyperparameters"]
    except FileNotFoundError:
        raise UserError(f"no best-trial file {path}: `imgclf tune` and `imgclf-tune` write one") from None
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path} is not a best-trial file (JSON with \"hyperparameters\")") from None
    return {k: v for k, v in typed(hps).items() if k not in TRIAL_ONLY}


# ---------------------------------------------------------------------------------------------
# local mode: the Optuna tuner in one container


CONTAINER_DATA = f"{SAGEMAKER_BASE_DIR}/input/data"
CONTAINER_OUTPUT = f"{SAGEMAKER_BASE_DIR}/output/tuning"


def local_search_command(image_uri: str, data: Path, output: Path, *, trials: int, pruner: str = DEFAULT_PRUNER,
                         fixed: dict | None = None, features: bool = True, seed: int = 0, gpu: bool = False,
                         tty: bool = False, docker_args=()) -> list[str]:
    """`docker run` of `imgclf-tune` in the image: the data root mounted read-only, the output
    folder (study, features, trials, best.json) mounted writable and owned by the caller."""
    flags = [a for name, value in (fixed or {}).items()
             for a in (f"--{name}", json.dumps(value) if isinstance(value, bool) else str(value))]
    return ["docker", "run", "--rm", "--interactive", *(["--tty"] if tty else []),
            "--user", f"{os.getuid()}:{os.getgid()}", "--env", "HOME=/tmp",
            *(["--gpus", "all"] if gpu else []), *docker_args,
            "--volume", f"{Path(data).resolve()}:{CONTAINER_DATA}:ro",
            "--volume", f"{Path(output).resolve()}:{CONTAINER_OUTPUT}",
            image_uri, "imgclf-tune", "--data", CONTAINER_DATA, "--output", CONTAINER_OUTPUT,
            "--trials", str(trials), "--pruner", pruner, "--sampler-seed", str(seed),
            *([] if features else ["--no-features"]), *flags]


def local_search(image_uri: str, data: Path, output: Path, **options) -> dict:
    """Run (or resume) the local tuner in a container, its progress on this terminal; best.json's content."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    tty = sys.stdout.isatty()
    command = local_search_command(image_uri, data, output, tty=tty, **options)
    if tty:  # the live status line needs the terminal
        code = subprocess.run(command).returncode
    else:
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            for line in proc.stdout:
                sys.stdout.write(line)
            code = proc.wait()
    if code:
        raise UserError(f"the local tuner stopped with exit code {code}; rerun the same command to resume")
    return json.loads((output / "best.json").read_text())
