"""Rules: checks on what a training job observed (`JobData`), with SageMaker Debugger's built-in
rules' names and default parameters, evaluated in the job instead of in rule containers.

Each rule looks at the data that arrived since its last evaluation, counts the data points it
looked at and how often it triggered, and logs a verdict when it triggers. The training rules
are here; the profiler rules (step timings, system metrics) are in profiler_rules.py.

Where Debugger counts in saved steps, these rules count in training steps, and the rules that
compare training with validation count in epochs (the loop validates once per epoch).
"""
from __future__ import annotations

import json
import logging
import math
import statistics
from typing import Any

from ..names import UserError

log = logging.getLogger("imgclf.rules")

MAX_EVENTS = 50  # trigger events kept per rule for the report


class Rule:
    """One check. Subclasses set `defaults`, `description`, `advice` and implement `check`."""

    name = ""
    defaults: dict[str, Any] = {}
    description = ""
    advice = ""

    def __init__(self, **params):
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise UserError(f"rule {self.name} has no parameter {', '.join(unknown)} "
                            f"(its parameters: {', '.join(sorted(self.defaults))})")
        self.params = {**self.defaults, **params}
        self.datapoints = 0
        self.evaluations = 0
        self.triggers = 0
        self.events: list[dict] = []
        self.status = "no data yet"
        self._firing = False

    def __getattr__(self, key):  # params read as attributes: self.threshold
        params = self.__dict__.get("params", {})
        if key in params:
            return params[key]
        raise AttributeError(key)

    def check(self, data, final: bool = False) -> None:
        """Look at what is new in `data` (jobdata.JobData); `final` at the end of the job."""

    def verdict(self, triggered: bool, where: str, message: str, datapoints: int = 1) -> None:
        self.evaluations += 1
        self.datapoints += datapoints
        if triggered:
            self.triggers += 1
            if len(self.events) < MAX_EVENTS:
                self.events.append({"where": where, "message": message})
            if not self._firing:  # log when it starts firing, not at every evaluation while it does
                log.warning("rule %s triggered at %s (%d times so far): %s", self.name, where, self.triggers, message)
            self.status = f"triggered: {message}"
        else:
            if self._firing:
                log.info("rule %s no longer triggers at %s: %s", self.name, where, message)
            if not self.triggers:
                self.status = f"ok: {message}"
        self._firing = triggered

    def not_applicable(self, why: str) -> None:
        self.status = f"not applicable: {why}"

    def summary(self) -> dict:
        return dict(name=self.name, kind=self.kind, description=self.description, advice=self.advice,
                    parameters=self.params, datapoints=self.datapoints, evaluations=self.evaluations,
                    triggers=self.triggers, status=self.status, events=self.events)

    kind = "training"


# ---------------------------------------------------------------------------------------------
# training rules


class VanishingGradient(Rule):
    name = "VanishingGradient"
    defaults = {"threshold": 1e-7}
    description = "Triggers when the mean absolute value of a gradient tensor falls below threshold."
    advice = ("Gradients this small stop learning: check the loss scale, use batch normalization or residual "
              "connections, a non-saturating activation, or a higher learning rate.")

    def __init__(self, **params):
        super().__init__(**params)
        self._seen = 0

    def check(self, data, final=False):
        for step, means in data.gradient_means[self._seen:]:
            small = sorted(name for name, m in means.items() if m < self.threshold)
            self.verdict(bool(small), f"step {step}",
                         f"mean |gradient| below {self.threshold:g} in {len(small)} of {len(means)} tensors"
                         + (f" ({', '.join(small[:3])})" if small else ""), datapoints=len(means))
        self._seen = len(data.gradient_means)


class PoorWeightInitialization(Rule):
    name = "PoorWeightInitialization"
    defaults = {"activation_inputs_regex": ".*relu_input", "threshold": 10.0, "distribution_range": 0.001,
                "patience": 5, "steps": 10}
    description = ("In the first `steps` steps, on the layers not loaded from pretrained weights (the new head; "
                   "the whole network when pretrained=false): triggers when the ratio of the largest to the smallest "
                   "variance of the activation inputs across layers exceeds threshold, when the 5th-95th percentile "
                   "range of the gradients is below distribution_range, or when the loss did not decrease over them.")
    advice = ("Check how the layers that were not loaded from pretrained weights are initialised (Xavier or "
              "Kaiming keep activation variances comparable across layers).")

    def __init__(self, **params):
        super().__init__(**params)
        self._seen_act = self._seen_grad = 0
        self._loss_checked = False
        self.scope = "all layers"  # which layers the statistics cover: the monitor sets it (new_layers)

    def verdict(self, triggered, where, message, datapoints=1):
        super().verdict(triggered, where, f"{message}; judged on {self.scope}", datapoints)

    @staticmethod
    def new_layers(model, pretrained: bool):
        """(module, words) of the layers not loaded from pretrained weights: the new head, or the whole
        network when training from scratch. Loaded layers start from learnt weights, not an initialisation."""
        from ..artifact.network import head, head_name

        if not pretrained:
            return model, "the whole network (pretrained=false: no layer was loaded)"
        return head(model), f"the new head ({head_name(model)}), the only layers not loaded from pretrained weights"

    def check(self, data, final=False):
        # one verdict per step on what was measured at that step
        found: dict[int, list[tuple[bool, str]]] = {}
        for step, variances in data.activation_variances[self._seen_act:]:
            values = [v for v in variances.values() if v > 0]
            if len(values) >= 2:
                ratio = max(values) / min(values)
                found.setdefault(step, []).append((ratio > self.threshold, f"activation input variance ratio {ratio:.3g} "
                                                   f"across {len(values)} layers (threshold {self.threshold:g})"))
        for step, width in data.gradient_ranges[self._seen_grad:]:
            found.setdefault(step, []).append((width < self.distribution_range, f"gradient 5th-95th percentile "
                                               f"range {width:.3g} (minimum {self.distribution_range:g})"))
        self._seen_act, self._seen_grad = len(data.activation_variances), len(data.gradient_ranges)
        for step, checks in sorted(found.items()):
            bad = [m for hit, m in checks if hit]
            self.verdict(bool(bad), f"step {step}", "; ".join(bad or [m for _, m in checks]), datapoints=len(checks))
        losses = data.losses
        if not self._loss_checked and len(losses) >= min(self.steps, 2 * self.patience):
            self._loss_checked = True
            first = statistics.fmean(losses[:self.patience])
            last = statistics.fmean(losses[self.steps - self.patience:self.steps])
            self.verdict(last >= first, f"step {self.steps}",
                         f"mean loss of steps 1-{self.patience} {first:.4f}, of steps "
                         f"{self.steps - self.patience + 1}-{self.steps} {last:.4f}", datapoints=self.steps)


class LossNotDecreasing(Rule):
    name = "LossNotDecreasing"
    defaults = {"num_steps": 10, "diff_percent": 0.0, "increase_threshold_percent": 5.0, "mode": "TRAIN"}
    description = ("Every num_steps steps: triggers when the mean training loss of those steps is not at least "
                   "diff_percent % below the mean of the num_steps before, or more than "
                   "increase_threshold_percent % above the lowest window mean so far.")
    advice = ("Loss is flat or rising: lower the learning rate if it oscillates, raise it if it is flat, check "
              "the labels and the data pipeline.")

    def __init__(self, **params):
        super().__init__(**params)
        if self.mode.upper() != "TRAIN":
            raise UserError("rule LossNotDecreasing: this job records training losses only (mode TRAIN)")
        self._windows = 0
        self._best = math.inf

    def check(self, data, final=False):
        n = int(self.num_steps)
        while (self._windows + 2) * n <= len(data.losses):
            i = self._windows
            before = statistics.fmean(data.losses[i * n:(i + 1) * n])
            now = statistics.fmean(data.losses[(i + 1) * n:(i + 2) * n])
            self._best = min(self._best, before)
            flat = now >= before * (1 - self.diff_percent / 100)
            rising = now > self._best * (1 + self.increase_threshold_percent / 100)
            self.verdict(flat or rising, f"step {(i + 2) * n}",
                         f"mean loss {now:.4f} over the last {n} steps, {before:.4f} over the {n} before"
                         + (f", lowest {self._best:.4f}" if rising else ""), datapoints=n)
            self._windows += 1


class Overfit(Rule):
    name = "Overfit"
    defaults = {"start_step": 0, "patience": 1, "ratio_threshold": 0.1}
    description = ("After each validation: triggers when (valid_loss - train_loss) / train_loss exceeds "
                   "ratio_threshold for patience validations in a row (from epoch start_step on).")
    advice = "Add augmentation or regularisation (weight decay, dropout), use more data, or stop earlier."

    def __init__(self, **params):
        super().__init__(**params)
        self._seen = 0
        self._run = 0

    def check(self, data, final=False):
        for m in data.epochs[self._seen:]:
            if m["epoch"] < self.start_step or not m.get("train_loss"):
                continue
            ratio = (m["valid_loss"] - m["train_loss"]) / m["train_loss"]
            self._run = self._run + 1 if ratio > self.ratio_threshold else 0
            self.verdict(self._run >= self.patience, f"epoch {m['epoch']}",
                         f"(valid_loss - train_loss) / train_loss = {ratio:.3f} (threshold {self.ratio_threshold:g})",
                         datapoints=2)
        self._seen = len(data.epochs)


class Overtraining(Rule):
    name = "Overtraining"
    defaults = {"patience_train": 5, "patience_validation": 10, "delta": 0.1}
    description = ("Triggers when the training loss has not improved by delta for patience_train epochs, or the "
                   "validation loss for patience_validation epochs.")
    advice = "Training longer no longer helps: stop earlier (early-stopping-patience) or lower the learning rate."

    def __init__(self, **params):
        super().__init__(**params)
        self._seen = 0
        self._best = {"train_loss": math.inf, "valid_loss": math.inf}
        self._since = {"train_loss": 0, "valid_loss": 0}

    def check(self, data, final=False):
        for m in data.epochs[self._seen:]:
            stale = []
            for key, patience in (("train_loss", self.patience_train), ("valid_loss", self.patience_validation)):
                if m[key] < self._best[key] - self.delta:
                    self._best[key], self._since[key] = m[key], 0
                else:
                    self._since[key] += 1
                if self._since[key] >= patience:
                    stale.append(f"{key} not improved by {self.delta:g} for {self._since[key]} epochs")
            self.verdict(bool(stale), f"epoch {m['epoch']}", "; ".join(stale) or
                         f"train_loss {m['train_loss']:.4f}, valid_loss {m['valid_loss']:.4f} still improving",
                         datapoints=2)
        self._seen = len(data.epochs)


TRAINING_RULES = (VanishingGradient, Overfit, Overtraining, PoorWeightInitialization, LossNotDecreasing)


def build_rules(classes, overrides: dict[str, dict]) -> list[Rule]:
    """Rules of `classes` with per-rule parameter `overrides` ({"Overfit": {"patience": 3}});
    `{"Overfit": false}` leaves a rule out."""
    rules = []
    for cls in classes:
        params = overrides.get(cls.name, {})
        if params is False:
            continue
        if not isinstance(params, dict):
            raise UserError(f"rule-parameters: {cls.name} needs an object of parameters or false, got {params!r}")
        rules.append(cls(**params))
    return rules


def parse_rule_parameters(text: str, known: set[str]) -> dict[str, dict]:
    """The `rule-parameters` hyperparameter: JSON {"RuleName": {"param": value}, ...}."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise UserError(f"rule-parameters is not JSON ({e}): {text[:80]!r}") from None
    if not isinstance(value, dict):
        raise UserError('rule-parameters must be a JSON object such as {"Overfit": {"patience": 3}}')
    unknown = sorted(set(value) - known)
    if unknown:
        raise UserError(f"rule-parameters: unknown rule {', '.join(unknown)} (rules: {', '.join(sorted(known))})")
    return value
