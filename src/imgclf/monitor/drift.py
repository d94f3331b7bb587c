"""Drift checks of captured traffic against the model's baseline, each a statistical test that
knows its sample size, plus a smallest effect worth a page:

    predicted classes   chi-square goodness of fit to the training data's class priors
                        effect: total variation distance
    confidence, entropy two-sample Kolmogorov-Smirnov against the validation set's sample
                        effect: the KS statistic D
    input statistics    KS per numeric statistic (brightness, contrast, width, height) against
                        the training images'; chi-square on channel counts
    with ground truth   accuracy and each class's recall: one-sided Fisher exact test of live
                        against the evaluation (its own sample counted, not taken as exact)
                        effect: the drop

Drift is claimed where p < ALPHA / (number of tests run) (Bonferroni: a clean sample is wrongly
flagged at most ALPHA of the time) and the effect reaches its minimum. A check without enough
data for its test is skipped, never claimed: a small clean sample shows no drift.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from ..artifact.baseline import NUMERIC_INPUTS

ALPHA = 0.01  # family-wise: divided among the tests run
MIN_EXPECTED = 5  # chi-square: the smallest expected count per category for its approximation
MIN_SAMPLE = 20  # KS and Fisher: fewer values on either side, no test
MIN_DISTANCE = 0.1  # total variation distance between class distributions
MIN_KS = 0.1  # Kolmogorov-Smirnov D
MIN_DROP = 0.05  # accuracy or recall, absolute
# Confidence and entropy are compared at this resolution: the answers carry 6 decimals, so a
# near-certain answer's entropy is 0 live and 1e-6 in the baseline, a difference KS would see
PREDICTION_RESOLUTION = 0.01


@dataclass
class Check:
    """One comparison: what was compared, the test and its figures, and the verdict."""

    name: str  # e.g. "predicted_class", "confidence", "input.brightness", "recall.dress"
    kind: str  # "prediction", "input", "quality"
    test: str
    n: int  # live values
    statistic: float | None = None
    p_value: float | None = None
    effect: float | None = None  # in the unit the minimum is stated in
    min_effect: float | None = None
    baseline: float | None = None  # for quality: the evaluation's figure; else a summary
    live: float | None = None
    drift: bool = False
    skipped: str | None = None  # why no test ran

    def to_dict(self) -> dict:
        """JSON-ready: an infinite or undefined statistic (an odds ratio of zero counts) becomes null."""
        return {k: (round(v, 6) if np.isfinite(v) else None) if isinstance(v, float) else v
                for k, v in asdict(self).items()}


def categorical(name: str, kind: str, live: dict[str, int], expected_shares: dict[str, float],
                min_effect: float = MIN_DISTANCE) -> Check:
    """Chi-square goodness of fit of live counts to expected shares; categories expected too rarely
    for the approximation are pooled into one."""
    n = sum(live.values())
    keys = sorted(set(expected_shares) | set(live))
    observed = np.array([live.get(k, 0) for k in keys], dtype=float)
    shares = np.array([expected_shares.get(k, 0.0) for k in keys], dtype=float)
    check = Check(name, kind, "chi-square", n, min_effect=min_effect)
    if n == 0 or shares.sum() == 0:
        check.skipped = "no data"
        return check
    shares = shares / shares.sum()
    check.effect = 0.5 * float(np.abs(observed / n - shares).sum())
    if shares[observed > 0].min(initial=1.0) == 0:  # a category the baseline never had
        check.statistic, check.p_value = float("inf"), 0.0
        return check
    if len(keys) == 1:
        check.skipped = f"one category ({keys[0]}) on both sides: nothing to compare"
        return check
    observed, expected = _pooled(observed, shares * n)
    if len(observed) < 2 or expected.min() < MIN_EXPECTED:
        check.skipped = f"too few records for a chi-square test ({n})"
        return check
    result = stats.chisquare(observed, expected)
    check.statistic, check.p_value = float(result.statistic), float(result.pvalue)
    return check


def _pooled(observed: np.ndarray, expected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Categories expected fewer than MIN_EXPECTED times pooled into one bin; a pooled bin still
    that small joins the smallest of the others."""
    rare = expected < MIN_EXPECTED
    if not rare.any():
        return observed, expected
    observed = np.append(observed[~rare], observed[rare].sum())
    expected = np.append(expected[~rare], expected[rare].sum())
    if expected[-1] < MIN_EXPECTED and len(expected) > 1:
        smallest = int(np.argmin(expected[:-1]))
        observed[smallest] += observed[-1]
        expected[smallest] += expected[-1]
        observed, expected = observed[:-1], expected[:-1]
    return observed, expected


def two_sample(name: str, kind: str, live: list[float], baseline: list[float], min_effect: float = MIN_KS,
               resolution: float | None = None) -> Check:
    """Two-sample KS; with `resolution`, both samples are first rounded to it."""
    check = Check(name, kind, "kolmogorov-smirnov", len(live), min_effect=min_effect)
    if min(len(live), len(baseline)) < MIN_SAMPLE:
        check.skipped = f"too few values for a KS test (live {len(live)}, baseline {len(baseline)})"
        return check
    if resolution:
        live, baseline = (np.round(np.asarray(v, dtype=float) / resolution) * resolution for v in (live, baseline))
    result = stats.ks_2samp(live, baseline)
    check.statistic = check.effect = float(result.statistic)
    check.p_value = float(result.pvalue)
    check.baseline, check.live = float(np.mean(baseline)), float(np.mean(live))
    return check


def proportion_drop(name: str, live_hits: int, live_n: int, base_hits: int, base_n: int,
                    min_effect: float = MIN_DROP) -> Check:
    """Whether the live proportion (accuracy, a recall) is below the evaluation's: one-sided Fisher."""
    check = Check(name, "quality", "fisher-exact (one-sided)", live_n, min_effect=min_effect)
    if live_n == 0 or base_n == 0:
        check.skipped = "no data"
        return check
    check.live, check.baseline = live_hits / live_n, base_hits / base_n
    check.effect = check.baseline - check.live
    if live_n < MIN_SAMPLE:
        check.skipped = f"too few labelled images for a test ({live_n})"
        return check
    table = [[live_hits, live_n - live_hits], [base_hits, base_n - base_hits]]
    result = stats.fisher_exact(table, alternative="less")
    check.statistic, check.p_value = float(result.statistic), float(result.pvalue)
    return check


def decide(checks: list[Check], alpha: float = ALPHA) -> float:
    """Mark each tested check's drift; returns the per-test threshold (Bonferroni)."""
    tested = [c for c in checks if c.p_value is not None]
    threshold = alpha / max(1, len(tested))
    for c in tested:
        c.drift = c.p_value < threshold and c.effect is not None and c.effect >= c.min_effect
    return threshold


def prediction_checks(classes, priors: dict[str, float], predicted: np.ndarray, confidence: np.ndarray,
                      entropy: np.ndarray, baseline_predictions: dict) -> list[Check]:
    counts = Counter(classes[i] for i in predicted)
    return [categorical("predicted_class", "prediction", dict(counts), priors)] + [
        two_sample(name, "prediction", live.tolist(), baseline_predictions[name]["sample"],
                   resolution=PREDICTION_RESOLUTION) for name, live in (("confidence", confidence), ("entropy", entropy))]


def input_checks(live: list[dict], baseline_inputs: dict | None) -> list[Check]:
    if not baseline_inputs:
        return [Check("input", "input", "none", len(live), skipped="the baseline has no input statistics")]
    checks = [two_sample(f"input.{name}", "input", [s[name] for s in live], baseline_inputs[name]["sample"])
              for name in NUMERIC_INPUTS]
    channels = Counter(str(s["channels"]) for s in live)
    total = sum(baseline_inputs["channels"].values()) or 1
    checks.append(categorical("input.channels", "input", dict(channels),
                              {k: v / total for k, v in baseline_inputs["channels"].items()}))
    return checks


def quality_checks(classes, predicted: np.ndarray, truth: np.ndarray, evaluation: dict | None) -> list[Check]:
    """Live accuracy and per-class recall against evaluation.json's (its confusion matrix)."""
    if evaluation is None:
        return [Check("accuracy", "quality", "none", len(truth), skipped="the model has no evaluation.json")]
    matrix = evaluation["multiclass_classification_metrics"]["confusion_matrix"]
    base_n = sum(sum(row.values()) for row in matrix.values())
    base_hits = sum(matrix[c][c] for c in matrix)
    checks = [proportion_drop("accuracy", int((predicted == truth).sum()), len(truth), base_hits, base_n)]
    for i, c in enumerate(classes):
        mine = truth == i
        if c in matrix and mine.any():
            checks.append(proportion_drop(f"recall.{c}", int((predicted[mine] == i).sum()), int(mine.sum()),
                                          matrix[c][c], sum(matrix[c].values())))
    return checks
