"""SageMaker Debugger on AWS, for accounts that still have it: the estimator's `rules`,
`debugger_hook_config` and `profiler_config`, with the same rules and parameters that the image
evaluates itself.

The image saves tensors, evaluates the rules and writes the profiler report in every job without
these (imgclf.debug); with them (`imgclf train --sagemaker-debugger`), SageMaker also runs its
rule containers and its ProfilerReport beside the job, and writes debughookconfig.json and
profilerconfig.json, which the image follows. Debugger is no longer open to new AWS customers,
and SageMaker's local mode does not run rule containers.
"""
from __future__ import annotations

import json

from sagemaker.debugger import CollectionConfig, DebuggerHookConfig, ProfilerConfig, ProfilerRule, Rule, rule_configs

from ..names import DEBUG_SAVE_INTERVAL, MIN_DEBUG_SAVE_INTERVAL, PROFILER_INTERVAL_MS, UserError
from ..debug.profiler_rules import PROFILER_RULES
from ..debug.rules import TRAINING_RULES, parse_rule_parameters
from ..debug.tensors import COLLECTIONS
from .session import Target

# the image's training rules -> the SDK's built-in rule configs of the same name
RULE_CONFIGS = {
    "VanishingGradient": rule_configs.vanishing_gradient,
    "Overfit": rule_configs.overfit,
    "Overtraining": rule_configs.overtraining,
    "PoorWeightInitialization": rule_configs.poor_weight_initialization,
    "LossNotDecreasing": rule_configs.loss_not_decreasing,
}


def rules(rule_parameters: dict | None = None) -> list:
    """The five training rules (`{"Overfit": false}` leaves one out) and ProfilerReport, with the
    parameters given, as `{"Rule": {"param": value}}` (the `rule-parameters` hyperparameter)."""
    overrides = rule_parameters or {}
    out = []
    for name, config in RULE_CONFIGS.items():
        params = overrides.get(name, {})
        if params is False:
            continue
        out.append(Rule.sagemaker(config(), rule_parameters={k: _string(v) for k, v in params.items()} or None))
    report = {f"{name}_{k}": v for name, params in overrides.items() if name in {c.name for c in PROFILER_RULES}
              and isinstance(params, dict) for k, v in params.items()}
    out.append(ProfilerRule.sagemaker(rule_configs.ProfilerReport(**report)))
    return out


def debugger_hook_config(s3_output_path: str | None = None, save_interval: int = DEBUG_SAVE_INTERVAL,
                         collections=COLLECTIONS) -> DebuggerHookConfig:
    """Losses, weights, gradients and biases every `save_interval` steps (S3 path: the SDK's default
    under the job's output path when None)."""
    if save_interval < MIN_DEBUG_SAVE_INTERVAL:
        raise UserError(f"save_interval must be at least {MIN_DEBUG_SAVE_INTERVAL}, got {save_interval}")
    return DebuggerHookConfig(s3_output_path=s3_output_path, collection_configs=[
        CollectionConfig(name=c, parameters={"save_interval": str(save_interval)}) for c in collections])


def profiler_config(interval_ms: int = PROFILER_INTERVAL_MS) -> ProfilerConfig:
    """System monitoring every `interval_ms` (Debugger's framework profiling is deprecated from
    PyTorch 2.0: the image's own step timings and torch.profiler window replace it)."""
    return ProfilerConfig(system_monitor_interval_millis=interval_ms)


def estimator_kwargs(target: Target, hyperparameters: dict) -> dict:
    """`rules`, `debugger_hook_config` and `profiler_config` for an Estimator, from the job's own
    hyperparameters (rule-parameters, debug-save-interval, profiler-interval-ms)."""
    if target.local:
        raise UserError("SageMaker Debugger's rules run on AWS only; in local mode the job evaluates the same rules "
                        "itself: leave out --sagemaker-debugger and read profiler-report.html in the job's output")
    known = {c.name for c in TRAINING_RULES + PROFILER_RULES}
    overrides = parse_rule_parameters(str(hyperparameters.get("rule-parameters") or ""), known)
    save_interval = hyperparameters.get("debug-save-interval") or DEBUG_SAVE_INTERVAL
    interval_ms = hyperparameters.get("profiler-interval-ms") or PROFILER_INTERVAL_MS
    return dict(rules=rules(overrides), debugger_hook_config=debugger_hook_config(save_interval=int(save_interval)),
                profiler_config=profiler_config(int(interval_ms)))


def _string(value) -> str:
    """Debugger takes rule parameters as strings."""
    return value if isinstance(value, str) else json.dumps(value)
