"""One monitoring run: captured traffic against the model's baseline, written as Model Monitor
writes its results, plus a report:

    statistics.json   the live figures in Model Monitor's statistics shape (dataset item count,
                      one entry per feature with its numerical or categorical distribution)
    violations.json   Model Monitor's constraint_violations shape: {"violations": [{"feature_name",
                      "constraint_check_type", "description"}]}, one per check that found drift
    report.html       the checks and the distributions, live beside baseline (report.py)
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..artifact.baseline import HISTOGRAM_BINS, NUMERIC_INPUTS, confidence_and_entropy, histogram
from . import drift
from .baseline_source import ModelBaseline
from .capture import Capture

STATISTICS_FILE, VIOLATIONS_FILE, REPORT_FILE = "statistics.json", "violations.json", "report.html"
# Model Monitor's check types: a distribution's drift, and a model quality figure under its threshold
CHECK_TYPES = {"prediction": "baseline_drift_check", "input": "baseline_drift_check", "quality": "LessThanThreshold"}


@dataclass
class Analysis:
    model: ModelBaseline
    capture: Capture
    predicted: np.ndarray
    confidence: np.ndarray
    entropy: np.ndarray
    inputs: list[dict]
    checks: list[drift.Check]
    threshold: float  # the per-test p-value below which a check may claim drift
    labelled: int = 0  # images with ground truth
    truth: np.ndarray | None = None
    labelled_predicted: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def drift(self) -> bool:
        return any(c.drift for c in self.checks)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.model.baseline.classes


def analyse(model: ModelBaseline, capture: Capture, truth: dict[tuple[str, int], int] | None = None) -> Analysis:
    baseline = model.baseline
    obs = capture.observations
    probs = np.array([o.probabilities for o in obs]) if obs else np.zeros((0, len(baseline.classes)))
    predicted = probs.argmax(1) if len(probs) else np.zeros(0, dtype=int)
    confidence, entropy = confidence_and_entropy(probs) if len(probs) else (np.zeros(0), np.zeros(0))
    inputs = [o.inputs for o in obs if o.inputs is not None]
    checks = drift.prediction_checks(baseline.classes, baseline.priors, predicted, confidence, entropy,
                                     baseline.predictions)
    checks += drift.input_checks(inputs, baseline.inputs)
    analysis = Analysis(model, capture, predicted, confidence, entropy, inputs, checks, threshold=drift.ALPHA)
    if truth is not None:
        pairs = [(i, truth[(o.inference_id, o.position)]) for i, o in enumerate(obs)
                 if 0 <= truth.get((o.inference_id, o.position), -1) < len(baseline.classes)]
        analysis.labelled = len(pairs)
        if len(truth) > len(pairs):
            analysis.notes.append(f"{len(truth) - len(pairs)} ground-truth records match no captured image")
        analysis.truth = np.array([t for _, t in pairs], dtype=int)
        analysis.labelled_predicted = predicted[[i for i, _ in pairs]] if pairs else np.zeros(0, dtype=int)
        checks += drift.quality_checks(baseline.classes, analysis.labelled_predicted, analysis.truth, model.evaluation)
    analysis.threshold = drift.decide(checks)
    return analysis


# ---------------------------------------------------------------------------------------------
# Model Monitor's files


def _numerical(name: str, values, unit_interval: bool) -> dict:
    v = np.asarray(values, dtype=float)
    feature = {"name": name, "inferred_type": "Fractional", "numerical_statistics": {
        "common": {"num_present": int(len(v)), "num_missing": 0}}}
    if len(v):
        stats = feature["numerical_statistics"]
        stats.update(mean=float(v.mean()), sum=float(v.sum()), std_dev=float(v.std()), min=float(v.min()),
                     max=float(v.max()))
        if unit_interval:
            stats["distribution"] = {"histogram": histogram(v)}
        else:
            counts, edges = np.histogram(v, bins=HISTOGRAM_BINS)
            stats["distribution"] = {"histogram": {"edges": edges.tolist(), "counts": counts.tolist()}}
    return feature


def _categorical(name: str, counts: dict[str, int]) -> dict:
    return {"name": name, "inferred_type": "String", "string_statistics": {
        "common": {"num_present": sum(counts.values()), "num_missing": 0}, "distinct_count": len(counts),
        "distribution": {"categorical": {"buckets": [{"value": k, "count": v} for k, v in counts.items()]}}}}


def statistics(a: Analysis) -> dict:
    predicted = {c: int((a.predicted == i).sum()) for i, c in enumerate(a.classes)}
    features = [_categorical("predicted_class", predicted), _numerical("confidence", a.confidence, True),
                _numerical("entropy", a.entropy, True)]
    features += [_numerical(f"input.{name}", [s[name] for s in a.inputs], False) for name in NUMERIC_INPUTS]
    channels = Counter(str(s["channels"]) for s in a.inputs)
    features.append(_categorical("input.channels", dict(sorted(channels.items()))))
    out = {"version": 0.0, "dataset": {"item_count": len(a.predicted)},
           "capture": {"files": a.capture.files, "records": a.capture.records, "errors": a.capture.errors,
                       "unreadable": a.capture.unreadable, "labelled_images": a.labelled},
           "features": features,
           "checks": [c.to_dict() for c in a.checks], "p_value_threshold": a.threshold, "drift": a.drift}
    return out


def violations(a: Analysis) -> dict:
    out = []
    for c in a.checks:
        if not c.drift:
            continue
        if c.kind == "quality":
            text = (f"{c.name} {c.live:.4f} on {c.n} labelled images, below the evaluation's {c.baseline:.4f} "
                    f"(drop {c.effect:.4f}, {c.test} p={c.p_value:.3g})")
            out.append({"metric_name": c.name, "constraint_check_type": CHECK_TYPES[c.kind], "description": text})
        else:
            text = (f"{c.name} of {c.n} live values differs from the baseline: {c.test} statistic "
                    f"{c.statistic:.4g}, p={c.p_value:.3g} < {a.threshold:.3g}, effect {c.effect:.4f} "
                    f">= {c.min_effect}")
            out.append({"feature_name": c.name, "constraint_check_type": CHECK_TYPES[c.kind], "description": text})
    return {"violations": out}


def verdict_line(a: Analysis) -> str:
    """`monitor: records=<n> drift=<yes|no> ...`, with the figures behind the verdict."""
    parts = [f"records={a.capture.records}", f"images={len(a.predicted)}", f"drift={'yes' if a.drift else 'no'}"]
    drifted = [c.name for c in a.checks if c.drift]
    if drifted:
        parts.append("drifted=" + ",".join(drifted))
    for c in a.checks:
        if c.skipped:
            continue
        if c.name in ("predicted_class", "confidence", "input.brightness", "input.contrast", "accuracy"):
            short = c.name.removeprefix("input.")
            parts.append(f"{short}_p={c.p_value:.3g}" + (f" {short}_effect={c.effect:.3f}" if c.effect is not None
                                                            else ""))
    if a.labelled:
        acc = next((c for c in a.checks if c.name == "accuracy"), None)
        if acc is not None and acc.live is not None:
            parts.append(f"labelled={a.labelled} live_accuracy={acc.live:.4f} evaluation_accuracy={acc.baseline:.4f}")
    parts.append(f"p_threshold={a.threshold:.3g}")
    return "monitor: " + " ".join(parts)


def write(a: Analysis, out: Path) -> None:
    from .report import render

    out.mkdir(parents=True, exist_ok=True)
    (out / STATISTICS_FILE).write_text(json.dumps(statistics(a), indent=1) + "\n")
    (out / VIOLATIONS_FILE).write_text(json.dumps(violations(a), indent=1) + "\n")
    (out / REPORT_FILE).write_text(render(a), encoding="utf-8")
