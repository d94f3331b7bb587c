"""The local tuner: Optuna trials through the training code, pruning, progress, best.json, and a
search killed mid-trial that a rerun of the same command resumes."""
import io
import json
import os
import signal
import subprocess
import sys

import optuna
import pytest
import torch

from imgclf.artifact.network import head, load_artifact
from imgclf.callbacks import Callback
from imgclf.hpo import OBJECTIVE_METRIC, SEARCH_SPACE, search
from imgclf.hpo.progress import Progress
from imgclf.hpo.study import summary
from imgclf.names import UserError
from imgclf.train import backbone, builders, features

FIXED = {"arch": "efficientnet_lite0", "recipe": "linear", "image-size": "32", "epochs": "2", "num-workers": "0"}


def channels(root):
    return {"training": root / "train", "validation": root / "valid", "test": root / "test"}


def test_suggest_draws_from_the_search_space_and_leaves_fixed_names_out():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    points = [search.suggest(study.ask()) for _ in range(200)]
    assert all(0.001 <= p["lr"] <= 0.1 and 0 <= p["momentum"] <= 1 for p in points)
    assert {p["batch-size"] for p in points} == set(SEARCH_SPACE["batch-size"].values)
    assert sum(p["lr"] < 0.01 for p in points) > 70  # logarithmic: half below the geometric middle
    assert set(search.suggest(study.ask(), fixed={"lr": "0.01"})) == set(SEARCH_SPACE) - {"lr"}
    with pytest.raises(UserError, match="nothing to tune"):
        search.suggest(study.ask(), fixed=dict.fromkeys(SEARCH_SPACE, "1"))


def test_a_pruned_trial_stops_the_training_job_from_its_callback():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.9))
    out = io.StringIO()
    reporter = search.ReportToTrial(study.ask(), Progress(4, metric=OBJECTIVE_METRIC, epochs=3, stream=out),
                                    pruning=True)
    reporter.on_train_begin(type("Job", (), {"args": type("Args", (), {"epochs": 3})})())
    with pytest.raises(optuna.TrialPruned):
        reporter.on_epoch_end(1, {OBJECTIVE_METRIC: 0.5, "valid_loss": 1.0})
    assert reporter.value == 0.5 and "epoch 1/3 valid_acc=0.5000" in out.getvalue()
    reporter.on_epoch_end(3, {OBJECTIVE_METRIC: 0.5})  # the last epoch: nothing left to save


def test_progress_plain_lines_and_time_left():
    out = io.StringIO()
    progress = Progress(4, metric="valid_acc", epochs=2, stream=out, live=False)
    progress.trial_begins(1, {"lr": 0.0123456, "batch-size": 64})
    progress.epoch_ends(1, {"valid_acc": 0.5, "valid_loss": 0.9})
    progress.set_best(0.5, 1)
    progress.trial_ends("complete", 0.5)
    lines = out.getvalue().splitlines()
    assert lines[0] == "trial 1/4 lr=0.01235 batch-size=64"
    assert lines[1] == "trial 1/4 epoch 1/2 valid_acc=0.5000 valid_loss=0.9000"
    assert lines[2].startswith("trial 1/4 complete valid_acc=0.5000 in ") and "best valid_acc=0.5000 (trial 1)" in lines[2]
    assert "left" in lines[2] and progress.eta() == pytest.approx(3 * progress.durations[0])
    live = io.StringIO()
    Progress(4, metric="valid_acc", epochs=2, stream=live, live=True).note("x")
    assert live.getvalue().startswith("\r\x1b[Kx\n[0/4 done]")  # the status line redrawn below


def test_search_with_cached_features_writes_best_and_resumes_without_redoing(tmp_path, image_folders):
    s = search.Search(channels(image_folders), tmp_path / "out", trials=3, fixed=FIXED, pruner="none")
    out = io.StringIO()
    best = search.run(s, Progress(3, metric=OBJECTIVE_METRIC, epochs=2, stream=out, live=False))
    log = out.getvalue()
    assert "features: backbone features" in log and log.count(" complete valid_acc=") == 3
    saved = json.loads((tmp_path / "out" / search.BEST_FILE).read_text())
    assert saved == best and saved["objective"]["metric"] == OBJECTIVE_METRIC
    assert 0 <= saved["objective"]["value"] <= 1
    hps = saved["hyperparameters"]
    assert (hps["arch"], hps["image-size"], hps["epochs"]) == ("efficientnet_lite0", 32, 2)
    assert isinstance(hps["batch-size"], int) and 0.001 <= hps["lr"] <= 0.1 and "features" not in hps
    assert hps["recipe"] == "linear"  # named in best.json: the final job trains as the trials did
    # only the best trial's artifact is kept
    assert [p.parent.name for p in (tmp_path / "out" / "trials").glob("*/model")] == [f"{saved['trial']:03d}"]
    # a trial interrupted runs again whole: it writes no checkpoint
    assert not list((tmp_path / "out" / "trials").glob("*/checkpoints/*"))

    again = io.StringIO()
    assert search.run(s, Progress(3, metric=OBJECTIVE_METRIC, epochs=2, stream=again, live=False)) == best
    assert "resuming: 3 of 3 trials already finished" in again.getvalue() and "epoch" not in again.getvalue()

    other = search.Search(channels(image_folders), tmp_path / "out", trials=3, fixed={**FIXED, "epochs": "3"})
    with pytest.raises(UserError, match="other settings"):
        search.run(other)


class TrialHeads(Callback):
    """What each trial's job wrote into its model dir, and the head it trained, by trial folder."""

    def __init__(self):
        self.files, self.heads = {}, {}

    def on_train_begin(self, job):
        self.job = job

    def on_train_end(self, history):
        trial = self.job.env.model_dir.parent.name
        self.files[trial] = {p.name for p in self.job.env.model_dir.iterdir()}
        self.heads[trial] = {k: v.clone() for k, v in head(self.job.model).state_dict().items()}


def test_trials_on_cached_features_build_the_head_alone_and_the_best_becomes_a_whole_artifact(
        tmp_path, image_folders, monkeypatch):
    built = []  # every network built, through the job's builder or the artifact's completion

    def counting(create):
        return lambda arch, num_classes: built.append(arch) or create(arch, num_classes)

    for module in (builders, features):
        monkeypatch.setattr(module, "create_model", counting(module.create_model))
    s = search.Search(channels(image_folders), tmp_path / "out", trials=3, fixed=FIXED, pruner="none")
    trials = TrialHeads()
    best = search.run(s, Progress(3, metric=OBJECTIVE_METRIC, epochs=2, stream=io.StringIO(), live=False),
                      callbacks=[trials])
    # one network for the features, one for the best trial's artifact; the trials build none
    assert built == ["efficientnet_lite0", "efficientnet_lite0"]
    assert len(trials.files) == 3
    for files in trials.files.values():
        assert features.HEAD_FILE in files and "model.json" in files and "model.pt" not in files

    model_dir = tmp_path / "out" / best["model"]
    assert not (model_dir / features.HEAD_FILE).exists()
    net, card = load_artifact(model_dir)  # as serving loads it
    assert card.arch == "efficientnet_lite0" and card.classes == ("blue", "green", "red")
    trained = trials.heads[f"{best['trial']:03d}"]
    assert torch.equal(head(net).weight, trained["weight"]) and torch.equal(head(net).bias, trained["bias"])
    imagenet = torch.load(backbone.find_imagenet_weights("efficientnet_lite0", None), weights_only=True)
    assert torch.equal(net._conv_stem.weight, imagenet["_conv_stem.weight"])


def test_search_killed_mid_trial_resumes_with_the_same_command(tmp_path, image_folders):
    command = [sys.executable, "-m", "imgclf.hpo.cli", "--data", str(image_folders), "--output",
               str(tmp_path / "out"), "--trials", "3", "--pruner", "none", "--no-features",
               *[a for k, v in {**FIXED, "epochs": "3"}.items() for a in (f"--{k}", v)]]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("trial 2/3 epoch 1/3"):
            proc.send_signal(signal.SIGKILL)  # no chance to clean up: as a killed machine
            break
    proc.communicate(timeout=60)
    assert any(line.startswith("trial 1/3 complete") for line in seen), "".join(seen)

    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    out = rerun.stdout
    assert "trial 2 was interrupted: running it again" in out
    assert "resuming: 1 of 3 trials already finished" in out
    assert "trial 1/3" not in out  # the finished trial is not trained again
    trials = summary(tmp_path / "out")
    assert [t["state"] for t in trials] == ["complete", "fail", "complete", "complete"]
    assert trials[2]["params"] == trials[1]["params"]  # the interrupted point, run again
    assert "estimator.set_hyperparameters(**{" in out


def test_every_pruner_name_builds_its_pruner():
    from imgclf.hpo.study import make_pruner
    from imgclf.names import PRUNERS

    kinds = {name: type(make_pruner(name, epochs=3)).__name__ for name in PRUNERS}
    assert kinds == {"median": "MedianPruner", "hyperband": "HyperbandPruner", "none": "NopPruner"}
    with pytest.raises(UserError, match="unknown pruner 'slow'"):
        make_pruner("slow", epochs=3)
