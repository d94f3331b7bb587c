"""Hyperparameter tuning: the package's search space as a SageMaker tuning job, and its best trial.

The ranges come from `imgclf.hpo.SEARCH_SPACE`, the objective from `imgclf.hpo.OBJECTIVE_METRIC`
read by the regex of `imgclf.metrics.metric_definitions`: one place for each. SageMaker's tuner
does not run in local mode, so `local_search` runs the trials one after another as local
training jobs, with parameters drawn at random from the same space and the objective read from
their logs with the same regex.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import random
import re
import sys
from dataclasses import dataclass

from sagemaker.tuner import CategoricalParameter, ContinuousParameter, HyperparameterTuner

from ..contract import RESERVED_PREFIXES, UserError, decode_value
from ..hpo import OBJECTIVE_METRIC, OBJECTIVE_TYPE, SEARCH_SPACE, Categorical, Continuous
from ..metrics import metric_definitions
from .session import Target
from .training import JobSpec, check_hyperparameters, estimator, train

STRATEGIES = ("Bayesian", "Random", "Hyperband", "Grid")


def parameter_ranges(space=SEARCH_SPACE, fixed=()) -> dict:
    """SageMaker parameter ranges for every name in `space` not given a fixed value."""
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
          early_stopping: str = "Auto") -> HyperparameterTuner:
    """A tuner over the search space; hyperparameters in `spec` stay fixed in every trial."""
    if strategy not in STRATEGIES:
        raise UserError(f"unknown strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
    return HyperparameterTuner(
        estimator(spec, target),
        objective_metric_name=OBJECTIVE_METRIC,
        hyperparameter_ranges=parameter_ranges(fixed=spec.hyperparameters),
        metric_definitions=metric_definitions(),  # all of them, so every trial charts them; one is the objective
        objective_type=OBJECTIVE_TYPE,
        strategy=strategy,
        max_jobs=max_jobs,
        max_parallel_jobs=max_parallel_jobs,
        early_stopping_type=early_stopping,
        base_tuning_job_name=spec.base_job_name,
    )


def decode_hyperparameters(raw: dict[str, str]) -> dict:
    """A job's hyperparameters as `Estimator.set_hyperparameters(**...)` takes them.

    SageMaker's own keys are dropped and values typed: the tuner's JSON-quoted `"\\"64\\""` and a
    plain `"64"` both become 64, `"0.0173"` becomes 0.0173, `"resnet50"` stays a string.
    """
    return {name: _typed(decode_value(value)) for name, value in raw.items() if not name.startswith(RESERVED_PREFIXES)}


def _typed(value: str):
    try:
        return json.loads(value)
    except ValueError:
        return value  # a plain string such as resnet50


@dataclass
class Best:
    job_name: str
    objective: float | None
    hyperparameters: dict

    def describe(self) -> str:
        args = " ".join(f"--{k} {json.dumps(v) if isinstance(v, bool) else v}" for k, v in self.hyperparameters.items())
        return (f"best training job: {self.job_name}\n"
                f"{OBJECTIVE_METRIC}: {self.objective}\n"
                f"estimator.set_hyperparameters(**{json.dumps(self.hyperparameters)})\n"
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


# ---------------------------------------------------------------------------------------------
# local mode


def sample(space=SEARCH_SPACE, rng: random.Random | None = None, fixed=()) -> dict:
    """One point of the search space: log-uniform for logarithmic ranges, uniform otherwise."""
    rng = rng or random.Random()
    point = {}
    for name, dim in space.items():
        if name in fixed:
            continue
        if isinstance(dim, Categorical):
            point[name] = rng.choice(dim.values)
        elif dim.scale == "Logarithmic":
            point[name] = round(math.exp(rng.uniform(math.log(dim.low), math.log(dim.high))), 6)
        else:
            point[name] = round(rng.uniform(dim.low, dim.high), 6)
    return point


def last_metric(log: str, name: str = OBJECTIVE_METRIC) -> float | None:
    """The last value of a metric in a job's log, read with the regex SageMaker uses."""
    (definition,) = [d for d in metric_definitions() if d["Name"] == name]
    values = re.findall(definition["Regex"], log)
    return float(values[-1]) if values else None


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self):
        for s in self.streams:
            s.flush()


def local_search(spec: JobSpec, target: Target, inputs: dict[str, str], *, max_jobs: int, seed: int = 0) -> Best:
    """Random search in local mode: `max_jobs` trials in turn; the one with the best objective."""
    rng = random.Random(seed)
    trials = []
    for trial in range(1, max_jobs + 1):
        point = sample(rng=rng, fixed=spec.hyperparameters)
        trial_spec = JobSpec(**{**spec.__dict__, "hyperparameters": {**spec.hyperparameters, **point}})
        est = estimator(trial_spec, target)
        log = io.StringIO()
        with contextlib.redirect_stdout(_Tee(sys.stdout, log)):
            train(est, inputs)
        objective = last_metric(log.getvalue())
        print(f"trial {trial}/{max_jobs} {est.latest_training_job.name}: {point} {OBJECTIVE_METRIC}={objective}")
        if objective is not None:
            typed = decode_hyperparameters(check_hyperparameters(trial_spec.hyperparameters))
            trials.append(Best(est.latest_training_job.name, objective, typed))
    if not trials:
        raise UserError(f"no trial reported {OBJECTIVE_METRIC}")
    pick = max if OBJECTIVE_TYPE == "Maximize" else min
    return pick(trials, key=lambda b: b.objective)
