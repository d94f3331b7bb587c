"""The one format of metric log lines, and the regexes SageMaker reads them with.

    epoch=3 train_loss=0.9120 train_acc=0.7310 valid_loss=0.8123 valid_acc=0.7712 lr=0.0173

A tuning job's objective and the training job's metric_definitions both come from here.
"""
from __future__ import annotations

NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
METRICS = ("train_loss", "train_acc", "valid_loss", "valid_acc", "test_loss", "test_acc", "images_per_sec")


def format_metrics(**values) -> str:
    """`key=value` pairs separated by spaces; floats with 4 decimals (6 significant digits for lr)."""
    parts = []
    for key, value in values.items():
        if isinstance(value, float):
            value = f"{value:.6g}" if key == "lr" else f"{value:.4f}"
        parts.append(f"{key}={value}")
    return " ".join(parts)


def metric_definitions() -> list[dict[str, str]]:
    """For the SageMaker SDK's Estimator(metric_definitions=...) and tuners."""
    return [{"Name": name, "Regex": rf"\b{name}={NUMBER}"} for name in METRICS]
