"""After training: the held-out evaluation and the monitoring baseline (artifact/baseline.py).

evaluation.json, computed with scikit-learn on the test channel (on the validation images where
the job has none), is SageMaker ModelMetrics' multiclass shape, which a model package points at
(`imgclf register`), plus what a person deciding to ship wants:

    {"multiclass_classification_metrics": {
         "confusion_matrix": {true class: {predicted class: count}},
         "accuracy" | "weighted_precision" | "weighted_recall" | "weighted_f1":
             {"value": ..., "standard_deviation": ...}},      # sd over bootstrap resamples
     "per_class": {class: {"precision", "recall", "f1", "support"}},
     "most_confused": [{"true", "predicted", "count"}, ...],
     "split": "test" | "validation", "images": n}

It goes into the model artifact and the job's output data. baseline.json goes into the artifact:
the training data's class priors, the confidence and entropy of the final weights on the
validation images, and input statistics of (a sample of) the training images.
"""
from __future__ import annotations

import json
import logging

import numpy as np
import torch
from torch.utils.data import Subset

from ..artifact.baseline import EVALUATION_FILE, Baseline, image_statistics, input_statistics, prediction_statistics
from ..names import UserError
from .engine import evaluate
from .metrics import format_metrics

log = logging.getLogger("imgclf.train")

BOOTSTRAP_RESAMPLES = 200  # for the standard deviations of the headline metrics
MOST_CONFUSED = 10  # (true, predicted) pairs listed, most frequent first
INPUT_STATISTICS_IMAGES = 1000  # training images read for the baseline's input statistics
WEIGHTED = ("accuracy", "weighted_precision", "weighted_recall", "weighted_f1")


def gathered(keep: list, num_classes: int, topology) -> tuple[np.ndarray, np.ndarray]:
    """(targets, probabilities) of every rank, from the batches that engine.evaluate kept."""
    targets = torch.cat([t for t, _ in keep]).numpy() if keep else np.zeros(0, dtype=np.int64)
    probs = torch.cat([p for _, p in keep]).numpy() if keep else np.zeros((0, num_classes), dtype=np.float32)
    if topology.distributed:
        parts = [None] * topology.world_size
        torch.distributed.all_gather_object(parts, (targets, probs))
        targets = np.concatenate([t for t, _ in parts])
        probs = np.concatenate([p for _, p in parts])
    return targets, probs


def _headline(y_true: np.ndarray, y_pred: np.ndarray, labels: list[int]) -> np.ndarray:
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="weighted",
                                                               zero_division=0)
    return np.array([accuracy_score(y_true, y_pred), precision, recall, f1])


def evaluation_metrics(classes: list[str], y_true: np.ndarray, y_pred: np.ndarray, split: str,
                       seed: int = 0) -> dict:
    """evaluation.json's content for true and predicted class indices."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    if not len(y_true):
        raise UserError(f"no readable {split} images to evaluate on")
    labels = list(range(len(classes)))
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    values = _headline(y_true, y_pred, labels)
    rng = np.random.default_rng(seed)
    resamples = [rng.integers(0, len(y_true), len(y_true)) for _ in range(BOOTSTRAP_RESAMPLES)]
    sd = np.std([_headline(y_true[i], y_pred[i], labels) for i in resamples], axis=0)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    pairs = sorted(((int(matrix[t, p]), t, p) for t in labels for p in labels if t != p and matrix[t, p]),
                   key=lambda x: (-x[0], x[1], x[2]))
    return {
        "multiclass_classification_metrics": {
            "confusion_matrix": {classes[t]: {classes[p]: int(matrix[t, p]) for p in labels} for t in labels},
            **{name: {"value": round(float(v), 6), "standard_deviation": round(float(s), 6)}
               for name, v, s in zip(WEIGHTED, values, sd)}},
        "per_class": {c: {"precision": round(float(precision[i]), 6), "recall": round(float(recall[i]), 6),
                          "f1": round(float(f1[i]), 6), "support": int(support[i])} for i, c in enumerate(classes)},
        "most_confused": [{"true": classes[t], "predicted": classes[p], "count": n}
                          for n, t, p in pairs[:MOST_CONFUSED]],
        "split": split,
        "images": int(len(y_true)),
    }


def _targets(dataset) -> list[int] | None:
    """The class index of every image of a dataset, where it knows them without reading the images."""
    if isinstance(dataset, Subset):
        inner = _targets(dataset.dataset)
        return None if inner is None else [inner[i] for i in dataset.indices]
    targets = getattr(dataset, "targets", None)
    return None if targets is None else [int(t) for t in targets]


def _image_paths(dataset) -> list[str] | None:
    if isinstance(dataset, Subset):
        inner = _image_paths(dataset.dataset)
        return None if inner is None else [inner[i] for i in dataset.indices]
    samples = getattr(dataset, "samples", None)
    return None if samples is None else [path for path, _ in samples]


def training_inputs(dataset, seed: int) -> dict | None:
    """Input statistics of up to INPUT_STATISTICS_IMAGES training images, as they are on disk;
    None for data without image files (shards, cached features)."""
    from PIL import Image

    from .data import UNREADABLE

    paths = _image_paths(dataset) if dataset is not None else None
    if not paths:
        return None
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(paths), min(len(paths), INPUT_STATISTICS_IMAGES), replace=False)
    stats = []
    for i in sorted(chosen):
        try:
            with Image.open(paths[i]) as img:
                stats.append(image_statistics(img))
        except UNREADABLE:
            continue
    return input_statistics(stats) if stats else None


def build_baseline(classes: list[str], train_dataset, valid: tuple[np.ndarray, np.ndarray], seed: int) -> Baseline:
    """baseline.json from the training data and the validation pass of the final weights. Without
    class indices of the training data (shards), the priors are the validation set's."""
    valid_targets, valid_probs = valid
    targets = _targets(train_dataset) if train_dataset is not None else None
    counts = np.bincount(np.asarray(targets if targets else valid_targets, dtype=np.int64), minlength=len(classes))
    return Baseline(classes=tuple(classes), class_counts={c: int(n) for c, n in zip(classes, counts)},
                    predictions=prediction_statistics(valid_probs), inputs=training_inputs(train_dataset, seed),
                    validation_images=int(len(valid_targets)))


def run(job, learner, loaders: dict, classes: list[str], train_dataset, test_batches: list) -> dict | None:
    """Every rank: a validation pass of the final weights (the baseline; the evaluation too without a
    test channel), gathered; the main rank writes evaluation.json and baseline.json. `test_batches`:
    what the test pass kept (engine.evaluate's `keep`), empty without a test channel."""
    args, topology = job.args, job.topology
    valid_batches: list = []
    evaluate(learner, loaders["valid"], keep=valid_batches)
    valid = gathered(valid_batches, len(classes), topology)
    split, (y_true, probs) = ("test", gathered(test_batches, len(classes), topology)) if "test" in loaders \
        else ("validation", valid)
    if not topology.is_main:
        return None
    result = evaluation_metrics(classes, y_true, probs.argmax(1), split, seed=args.seed)
    text = json.dumps(result, indent=1) + "\n"
    for folder in (job.env.model_dir, job.env.output_data_dir):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / EVALUATION_FILE).write_text(text)
    build_baseline(classes, train_dataset, valid, args.seed).write(job.env.model_dir)
    headline = result["multiclass_classification_metrics"]
    log.info(format_metrics(**{f"evaluation_{k}": headline[k]["value"] for k in WEIGHTED}))
    log.info("%s and the monitoring baseline written (%s, %d images)", EVALUATION_FILE, split, len(y_true))
    return result
