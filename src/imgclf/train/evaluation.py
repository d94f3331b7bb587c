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

It goes into the model artifact and the job's output data, with mistakes.json: thumbnails of up
to four images of each most confused pair (artifact/mistakes.py, mistake_images.py), which the
report shows under the pair. baseline.json goes into the artifact:
the training data's class priors, the confidence and entropy of the final weights on the
validation images, and input statistics of (a sample of) the training images.

A network finished outside its training loop (the tuner's best head on its backbone) gets the same
files from `run_on_network`.
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..artifact import mistakes
from ..artifact.baseline import EVALUATION_FILE, Baseline, image_statistics, input_statistics, prediction_statistics
from ..artifact.card import ModelCard
from ..names import UserError
from .builders import Transforms, build_datasets, default_workers
from .contract import TrainingEnvironment
from .data import make_loader
from .distributed import Topology
from .engine import evaluate
from .metrics import format_metrics
from .mistake_images import collect, dataset_targets, image_paths, positions
from .presets import ClassificationPresetEval

log = logging.getLogger("imgclf.train")

BOOTSTRAP_RESAMPLES = 200  # for the standard deviations of the headline metrics
MOST_CONFUSED = 10  # (true, predicted) pairs listed, most frequent first
INPUT_STATISTICS_IMAGES = 1000  # training images read for the baseline's input statistics
WEIGHTED = ("accuracy", "weighted_precision", "weighted_recall", "weighted_f1")


@dataclass
class Answers:
    """An evaluation pass over one split, every rank's: true class indices, class probabilities, the
    data set index of each image (-1 where unknown, mistake_images.positions) and the data set."""

    targets: np.ndarray
    probs: np.ndarray
    where: np.ndarray
    dataset: object


def gathered(keep: list, loader, num_classes: int, topology) -> Answers:
    """The Answers of every rank, from the batches that engine.evaluate kept over `loader`."""
    targets = torch.cat([t for t, _ in keep]).numpy() if keep else np.zeros(0, dtype=np.int64)
    probs = torch.cat([p for _, p in keep]).numpy() if keep else np.zeros((0, num_classes), dtype=np.float32)
    where = positions(keep, loader)
    if topology.distributed:
        parts = [None] * topology.world_size
        torch.distributed.all_gather_object(parts, (targets, probs, where))
        targets, probs, where = (np.concatenate(column) for column in zip(*parts))
    return Answers(targets, probs, where, loader.dataset)


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


def training_inputs(dataset, seed: int) -> dict | None:
    """Input statistics of up to INPUT_STATISTICS_IMAGES training images, as they are on disk;
    None for data without image files (shards, cached features)."""
    from PIL import Image

    from .data import UNREADABLE

    paths = image_paths(dataset) if dataset is not None else None
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


def build_baseline(classes: list[str], train_dataset, valid: Answers, seed: int) -> Baseline:
    """baseline.json from the training data and the validation pass of the final weights. Without
    class indices of the training data (shards), the priors are the validation set's."""
    valid_targets, valid_probs = valid.targets, valid.probs
    targets = dataset_targets(train_dataset) if train_dataset is not None else None
    counts = np.bincount(np.asarray(targets if targets else valid_targets, dtype=np.int64), minlength=len(classes))
    return Baseline(classes=tuple(classes), class_counts={c: int(n) for c, n in zip(classes, counts)},
                    predictions=prediction_statistics(valid_probs), inputs=training_inputs(train_dataset, seed),
                    validation_images=int(len(valid_targets)))


def run(job, learner, loaders: dict, classes: list[str], train_dataset, test_batches: list) -> dict | None:
    """Every rank: a validation pass of the final weights (the baseline; the evaluation too without a
    test channel), gathered; the main rank writes evaluation.json, mistakes.json and baseline.json.
    `test_batches`: what the test pass kept (engine.evaluate's `keep`), empty without a test channel."""
    valid_batches: list = []
    evaluate(learner, loaders["valid"], keep=valid_batches)
    answers = {"valid": gathered(valid_batches, loaders["valid"], len(classes), job.topology)}
    if "test" in loaders:
        answers["test"] = gathered(test_batches, loaders["test"], len(classes), job.topology)
    if not job.topology.is_main:
        return None
    return write(classes, answers, train_dataset, job.args.seed, job.env)


@torch.inference_mode()
def predict(model: nn.Module, loader, device) -> list:
    """engine.evaluate's `keep` of a network outside a training loop: (targets, probabilities) per batch."""
    model.eval()
    return [(targets, model(images.to(device)).float().softmax(1).cpu())
            for images, targets, _ in loader if len(targets)]


def run_on_network(model: nn.Module, card: ModelCard, env: TrainingEnvironment) -> dict:
    """What `run` writes, for a network finished outside its training loop (the tuner's best head on
    its backbone): its passes over the job's image channels with the card's evaluation transform,
    split as the job split them (its args.json)."""
    args = argparse.Namespace(**json.loads((env.output_data_dir / "args.json").read_text()))
    eval_tf = ClassificationPresetEval.from_settings(card.eval)
    splits = build_datasets(env, args, Transforms(eval_tf, eval_tf, card.eval))
    if list(splits.classes) != list(card.classes):
        raise UserError(f"the image channels' classes ({', '.join(splits.classes)}) are not the model's "
                        f"({', '.join(card.classes)})")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    answers = {}
    for split, dataset in (("valid", splits.valid), ("test", splits.test)):
        if dataset is not None:
            loader = make_loader(dataset, batch_size=args.batch_size, num_workers=default_workers(Topology()))
            answers[split] = gathered(predict(model, loader, device), loader, len(card.classes), Topology())
    return write(list(card.classes), answers, splits.train, args.seed, env)


def write(classes: list[str], answers: dict[str, Answers], train_dataset, seed: int,
          env: TrainingEnvironment) -> dict:
    """evaluation.json and mistakes.json of the test answers (the validation answers without a test
    channel) into the model and output data dirs, and baseline.json into the model dir; logged."""
    split, held_out = ("test", answers["test"]) if "test" in answers else ("validation", answers["valid"])
    result = evaluation_metrics(classes, held_out.targets, held_out.probs.argmax(1), split, seed=seed)
    text = json.dumps(result, indent=1) + "\n"
    pairs = collect(result["most_confused"], classes, held_out.targets, held_out.probs, held_out.where,
                    held_out.dataset)
    for folder in (env.model_dir, env.output_data_dir):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / EVALUATION_FILE).write_text(text)
        mistakes.write(folder, pairs)
    build_baseline(classes, train_dataset, answers["valid"], seed).write(env.model_dir)
    headline = result["multiclass_classification_metrics"]
    log.info(format_metrics(**{f"evaluation_{k}": headline[k]["value"] for k in WEIGHTED}))
    log.info("%s, thumbnails of %d mistakes and the monitoring baseline written (%s, %d images)", EVALUATION_FILE,
             sum(len(p["images"]) for p in pairs), split, len(held_out.targets))
    return result
