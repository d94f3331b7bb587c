"""What the monitor is asked to do: the hyperparameters, with SageMaker's profilerconfig.json
filling in what they leave at their defaults."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ..contract import UserError
from .profiler_rules import PROFILER_RULES
from .rules import TRAINING_RULES, build_rules, parse_rule_parameters

log = logging.getLogger("imgclf.profiler")

PROFILER_CONFIG_FILE = "profilerconfig.json"


@dataclass(frozen=True)
class MonitorSettings:
    output_data_dir: Path
    profiler: bool = True  # system metrics and step timings
    rules: bool = True
    rule_parameters: tuple = ()  # ((rule name, {param: value} or False), ...)
    interval_ms: int = 500
    trace_steps: tuple[int, int] | None = None  # first and last global step traced with torch.profiler
    device_sync: bool = False

    @classmethod
    def from_job(cls, args, env) -> MonitorSettings:
        """Hyperparameters, with profilerconfig.json's interval and detailed-profiling window when the
        hyperparameters leave them at their defaults."""
        known = {c.name for c in TRAINING_RULES + PROFILER_RULES}
        overrides = parse_rule_parameters(args.rule_parameters, known)
        interval, trace = args.profiler_interval_ms, parse_trace_steps(args.profiler_trace_steps)
        file_interval, file_trace = _read_profiler_config(getattr(env, "config_dir", None))
        if interval == 500 and file_interval:
            interval = file_interval
        trace = trace or file_trace
        if interval < 50:
            raise UserError(f"bad hyperparameter: profiler-interval-ms={interval} is below 50")
        settings = cls(output_data_dir=env.output_data_dir, profiler=args.profiler, rules=args.rules,
                       rule_parameters=tuple(overrides.items()), interval_ms=interval, trace_steps=trace,
                       device_sync=args.profiler_device_sync)
        settings.build_rules()  # a bad parameter fails the job before training
        return settings

    def build_rules(self):
        overrides = dict(self.rule_parameters)
        rules = build_rules(PROFILER_RULES, overrides) if self.profiler else []
        return (build_rules(TRAINING_RULES, overrides) if self.rules else []) + rules


def parse_trace_steps(text) -> tuple[int, int] | None:
    """`profiler-trace-steps`: "FIRST-LAST" (global training steps, from 1) or "" for none."""
    text = str(text or "").strip()
    if not text:
        return None
    try:
        first, _, last = text.partition("-")
        span = int(first), int(last or first)
    except ValueError:
        span = (0, 0)
    if not 1 <= span[0] <= span[1]:
        raise UserError(f"bad hyperparameter: profiler-trace-steps={text!r}, expected FIRST-LAST such as 5-7")
    return span


def _read_profiler_config(config_dir) -> tuple[int | None, tuple[int, int] | None]:
    """(interval ms, traced steps) from SageMaker's profilerconfig.json; its keys in any case."""
    path = Path(config_dir) / PROFILER_CONFIG_FILE if config_dir else None
    if path is None or not path.is_file():
        return None, None
    try:
        config = _lower_keys(json.loads(path.read_text()))
        params = _lower_keys(config.get("profilingparameters"))
        interval = params.get("profilingintervalinmilliseconds") or config.get("profilingintervalinmilliseconds")
        detailed = params.get("detailedprofilingconfig")
        detailed = _lower_keys(json.loads(detailed) if isinstance(detailed, str) else detailed or {})
        trace = None
        if "startstep" in detailed:
            first = int(detailed["startstep"]) + 1  # Debugger counts steps from 0
            trace = (first, first + int(detailed.get("numsteps", 1)) - 1)
        return (int(interval) if interval else None), trace
    except (ValueError, TypeError, AttributeError) as e:
        log.warning("ignoring %s: %s", path, e)
        return None, None


def _lower_keys(d):
    return {str(k).lower(): v for k, v in d.items()} if isinstance(d, dict) else {}
