"""What the model saw in training, kept in the artifact for whoever watches it serve:

    evaluation.json  the held-out evaluation (train/evaluation.py): SageMaker ModelMetrics'
                     `multiclass_classification_metrics`, plus per-class precision, recall, F1, support
    baseline.json    the monitoring baseline: class priors of the training data, the validation
                     set's confidence and entropy (histograms and a sample of values), and input
                     statistics of training images (sizes, channels, brightness, contrast)

Torch-free (numpy and PIL): training writes both, the monitor reads them with `Baseline.read`, and
computes the same statistics of the images it is shown with `image_statistics`.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageStat

EVALUATION_FILE = "evaluation.json"
BASELINE_FILE = "baseline.json"
FORMAT_VERSION = 1
HISTOGRAM_BINS = 20  # over [0, 1], for confidence and normalised entropy
SAMPLE_SIZE = 2000  # values kept per statistic, for two-sample tests (the rest is summarised)
STATISTICS_SIDE = 256  # images are shrunk to this side before brightness and contrast: the figures barely move
NUMERIC_INPUTS = ("width", "height", "brightness", "contrast")  # `channels` is categorical


def confidence_and_entropy(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of class probabilities: the top probability, and the entropy divided by log(classes)
    (0: all on one class, 1: uniform), so that both live on [0, 1] whatever the number of classes."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0)
    entropy = -(p * np.log(p)).sum(axis=1) / np.log(p.shape[1])
    return p.max(axis=1), np.clip(entropy, 0.0, 1.0)


def histogram(values: Sequence[float], bins: int = HISTOGRAM_BINS) -> dict:
    counts, edges = np.histogram(np.asarray(values, dtype=np.float64), bins=bins, range=(0.0, 1.0))
    return {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist()}


def summary(values: Sequence[float], seed: int = 0) -> dict:
    """Mean, standard deviation, quantiles, and a seeded sample of at most SAMPLE_SIZE values."""
    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return {"count": 0, "mean": None, "std": None, "quantiles": {}, "sample": []}
    sample = v if len(v) <= SAMPLE_SIZE else np.random.default_rng(seed).choice(v, SAMPLE_SIZE, replace=False)
    q = np.quantile(v, (0.05, 0.5, 0.95))
    return {"count": int(len(v)), "mean": round(float(v.mean()), 6), "std": round(float(v.std()), 6),
            "quantiles": {"p5": round(float(q[0]), 6), "p50": round(float(q[1]), 6), "p95": round(float(q[2]), 6)},
            "sample": [round(float(x), 5) for x in sample]}


def image_statistics(img: Image.Image) -> dict:
    """An image as it arrived (before any conversion): width, height, number of channels, and the
    mean (brightness) and standard deviation (contrast) of its grey levels, 0-255."""
    width, height = img.size
    channels = len(img.getbands())
    grey = img.copy()
    grey.draft("L", (STATISTICS_SIDE, STATISTICS_SIDE))  # JPEG: decode at reduced size
    grey.thumbnail((STATISTICS_SIDE, STATISTICS_SIDE))
    if grey.mode not in ("L", "RGB"):
        grey = grey.convert("RGBA" if "A" in grey.getbands() else "RGB")
    stat = ImageStat.Stat(grey.convert("L"))
    return {"width": width, "height": height, "channels": channels, "brightness": stat.mean[0],
            "contrast": stat.stddev[0]}


def input_statistics(stats: Iterable[dict]) -> dict:
    """Per-image statistics (image_statistics) of many images, summarised."""
    stats = list(stats)
    out = {name: summary([s[name] for s in stats]) for name in NUMERIC_INPUTS}
    out["channels"] = {str(k): v for k, v in sorted(Counter(s["channels"] for s in stats).items())}
    return out


def prediction_statistics(probabilities: np.ndarray) -> dict:
    """Confidence and entropy of many answers: histograms and summaries."""
    confidence, entropy = confidence_and_entropy(probabilities)
    return {"confidence": {"histogram": histogram(confidence), **summary(confidence)},
            "entropy": {"histogram": histogram(entropy), **summary(entropy)}}


@dataclass(frozen=True)
class Baseline:
    """baseline.json: `priors` maps each class to its share of the training data (counts in
    `class_counts`); `predictions` holds the validation set's confidence and entropy
    (prediction_statistics); `inputs` the training images' input_statistics, or None where the job
    had no image files to read (shards, cached features)."""

    classes: tuple[str, ...]
    class_counts: dict[str, int]
    predictions: dict
    inputs: dict | None
    validation_images: int

    @property
    def priors(self) -> dict[str, float]:
        total = sum(self.class_counts.values()) or 1
        return {c: self.class_counts.get(c, 0) / total for c in self.classes}

    def to_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, "classes": list(self.classes), "class_counts": self.class_counts,
                "priors": {c: round(p, 6) for c, p in self.priors.items()}, "validation_images": self.validation_images,
                "predictions": self.predictions, "inputs": self.inputs}

    def write(self, model_dir: Path) -> Path:
        path = Path(model_dir) / BASELINE_FILE
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def from_dict(cls, d: dict) -> Baseline:
        return cls(classes=tuple(d["classes"]), class_counts={k: int(v) for k, v in d["class_counts"].items()},
                   predictions=d["predictions"], inputs=d.get("inputs"), validation_images=d["validation_images"])

    @classmethod
    def read(cls, model_dir: Path) -> Baseline:
        path = Path(model_dir) / BASELINE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {BASELINE_FILE} in {model_dir}: the model was trained before monitoring "
                                    "baselines existed; train it again to monitor it")
        return cls.from_dict(json.loads(path.read_text()))


def read_evaluation(model_dir: Path) -> dict | None:
    """evaluation.json of a model folder, None when it has none."""
    path = Path(model_dir) / EVALUATION_FILE
    return json.loads(path.read_text()) if path.is_file() else None
