"""The held-out evaluation (evaluation.json), the thumbnails of its mistakes (mistakes.json) and the
monitoring baseline (baseline.json) a job writes, and the tuner's best head gets once completed."""
import json
import logging

import numpy as np
import pytest
import torch
from conftest import load_artifact, make_image_folder
from PIL import Image
from test_features import LITE
from test_train import job_env

from imgclf.artifact import mistakes
from imgclf.artifact.baseline import (
    BASELINE_FILE,
    EVALUATION_FILE,
    Baseline,
    confidence_and_entropy,
    image_statistics,
    read_evaluation,
)
from imgclf.debug import evaluation_section
from imgclf.train import features
from imgclf.train.data import ImageFolderDataset, make_loader
from imgclf.train.evaluation import evaluation_metrics
from imgclf.train.job import main, parse_hyperparameters, run
from imgclf.train.mistake_images import positions
from imgclf.train.presets import ClassificationPresetEval

CLASSES = ["cat", "dog", "fox"]


def test_metrics_in_sagemaker_multiclass_shape_with_per_class_figures():
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 1, 0, 2, 2, 1])
    result = evaluation_metrics(CLASSES, y_true, y_pred, "test")
    m = result["multiclass_classification_metrics"]
    assert m["confusion_matrix"] == {"cat": {"cat": 3, "dog": 1, "fox": 0}, "dog": {"cat": 1, "dog": 2, "fox": 0},
                                     "fox": {"cat": 0, "dog": 1, "fox": 2}}
    assert m["accuracy"]["value"] == 0.7
    # dog: precision 2/4, recall 2/3; weighted by support 4, 3, 3
    assert result["per_class"]["dog"] == {"precision": 0.5, "recall": pytest.approx(2 / 3, abs=1e-6),
                                          "f1": pytest.approx(4 / 7, abs=1e-6), "support": 3}
    recall = (4 * 0.75 + 3 * 2 / 3 + 3 * 2 / 3) / 10
    assert m["weighted_recall"]["value"] == pytest.approx(recall, abs=1e-6)
    for name in ("accuracy", "weighted_precision", "weighted_recall", "weighted_f1"):
        assert set(m[name]) == {"value", "standard_deviation"} and 0 < m[name]["standard_deviation"] < 0.5
    assert result["most_confused"][0] == {"true": "cat", "predicted": "dog", "count": 1}
    assert (result["split"], result["images"]) == ("test", 10)


def test_confidence_and_entropy_span_certain_to_uniform():
    confidence, entropy = confidence_and_entropy(np.array([[1.0, 0, 0, 0], [0.25, 0.25, 0.25, 0.25]]))
    assert confidence.tolist() == [1.0, 0.25]
    assert entropy[0] == pytest.approx(0, abs=1e-9) and entropy[1] == pytest.approx(1)


def test_image_statistics_of_an_image_as_it_arrived():
    half = Image.new("L", (40, 30), 0)
    half.paste(200, (0, 0, 20, 30))
    s = image_statistics(half)
    assert (s["width"], s["height"], s["channels"]) == (40, 30, 1)
    assert s["brightness"] == pytest.approx(100) and s["contrast"] == pytest.approx(100)
    assert image_statistics(Image.new("RGBA", (8, 8), (10, 10, 10, 255)))["channels"] == 4


def test_job_writes_evaluation_equal_to_its_test_pass_and_a_baseline(tmp_path, image_folders):
    env = job_env(tmp_path, image_folders)
    assert run(env) == 0
    test_acc = json.loads((env.output_data_dir / "metrics.json").read_text())[-1]["test_acc"]
    result = read_evaluation(env.model_dir)
    assert json.loads((env.output_data_dir / EVALUATION_FILE).read_text()) == result
    matrix = result["multiclass_classification_metrics"]["confusion_matrix"]
    assert list(matrix) == ["blue", "green", "red"]
    assert [sum(row.values()) for row in matrix.values()] == [4, 4, 4]  # the test channel, 4 images a class
    assert result["multiclass_classification_metrics"]["accuracy"]["value"] == pytest.approx(test_acc, abs=1e-6)
    assert result["split"] == "test" and {r["support"] for r in result["per_class"].values()} == {4}

    baseline = Baseline.read(env.model_dir)
    assert baseline.priors == pytest.approx({"blue": 1 / 3, "green": 1 / 3, "red": 1 / 3})
    assert baseline.validation_images == 12
    assert sum(baseline.predictions["confidence"]["histogram"]["counts"]) == 12
    inputs = baseline.inputs
    assert inputs["channels"] == {"3": 36} and inputs["width"]["mean"] == 64 and inputs["height"]["mean"] == 48
    assert 0 < inputs["brightness"]["mean"] < 255 and len(inputs["contrast"]["sample"]) == 36


def test_without_a_test_channel_the_validation_images_are_evaluated(tmp_path, image_folders):
    env = job_env(tmp_path, image_folders, epochs="1")
    del env.channels["test"]
    assert run(env) == 0
    result = read_evaluation(env.model_dir)
    assert (result["split"], result["images"]) == ("validation", 12)
    assert (env.model_dir / BASELINE_FILE).is_file()


def test_the_report_section_draws_the_matrix_bars_and_pairs():
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 1, 0, 2, 2, 1])
    section = evaluation_section.section(evaluation_metrics(CLASSES, y_true, y_pred, "test"))
    assert section["split"] == "test" and section["images"] == 10
    assert ("accuracy", "0.7000") == section["headline"][0][:2]
    matrix = str(section["matrix"])
    assert matrix.count("<rect") == 9 and "cat predicted as dog: 1 (25% of cat)" in matrix
    assert str(section["per_class"]).count("<rect") == 9 + 3  # 3 bars a class, 3 legend keys
    assert section["pairs"][0] == ("cat", "dog", 1, [])
    assert evaluation_section.section(None) is None


def test_the_tuners_best_head_completed_carries_the_whole_networks_evaluation(tmp_path, image_folders, caplog):
    extract = job_env(tmp_path / "features", image_folders, **LITE, **{"extract-features": "true"})
    assert run(extract) == 0
    trial = job_env(tmp_path / "trial", image_folders, **LITE, features="true")
    trial.channels = {"features": extract.model_dir}  # as the tuner's trials run: a head alone
    assert main(parse_hyperparameters(trial.hyperparameters), trial, head_only=True) == 0
    assert not (trial.model_dir / EVALUATION_FILE).exists()

    with caplog.at_level(logging.INFO, "imgclf.train"):
        features.complete_artifact(trial.model_dir, features.load(extract.model_dir), None,
                                   job_env(tmp_path / "trial", image_folders))  # the trial with its images
    assert "evaluation_accuracy=" in caplog.text
    result = read_evaluation(trial.model_dir)
    assert json.loads((trial.output_data_dir / EVALUATION_FILE).read_text()) == result
    assert (result["split"], result["images"]) == ("test", 12)
    net, card = load_artifact(trial.model_dir)  # the completed network's answers, as serving computes them
    test = ImageFolderDataset(image_folders / "test", card.classes, ClassificationPresetEval.from_settings(card.eval))
    with torch.no_grad():
        predicted = [card.classes[int(net(x[None]).argmax(1))] for x, _ in test]
    expected = {t: {p: 0 for p in card.classes} for t in card.classes}
    for (_, y), p in zip(test, predicted):
        expected[card.classes[y]][p] += 1
    assert result["multiclass_classification_metrics"]["confusion_matrix"] == expected
    pairs = mistakes.read(trial.model_dir)
    confused = [(p["true"], p["predicted"]) for p in result["most_confused"]]
    assert [(p["true"], p["predicted"]) for p in pairs] == confused
    assert Baseline.read(trial.model_dir).validation_images == 12
    assert not (trial.model_dir / features.HEAD_FILE).exists()


def test_answers_are_traced_to_their_images_in_the_batches_that_lost_none(tmp_path):
    make_image_folder(tmp_path / "test", per_class=4)
    dataset = ImageFolderDataset(tmp_path / "test", ["blue", "green", "red"], lambda img: torch.zeros(1))

    def answers():  # what engine.evaluate keeps: (targets, probabilities) of each batch's readable images
        loader = make_loader(dataset, batch_size=4, num_workers=0)
        return [(t, torch.full((len(t), 3), 1 / 3)) for _, t, _ in loader if len(t)], loader

    assert positions(*answers()).tolist() == list(range(12))
    (tmp_path / "test" / "green" / "1.jpg").write_bytes(b"not an image")  # the second batch loses one
    assert positions(*answers()).tolist() == [0, 1, 2, 3] + [-1] * 3 + [8, 9, 10, 11]
    for i in (0, 2, 3):  # the second batch lost: the third's answers would line up with its images
        (tmp_path / "test" / "green" / f"{i}.jpg").write_bytes(b"not an image")
    assert positions(*answers()).tolist() == [-1] * 8
