"""The image as SageMaker runs it with Debugger configured: `docker run IMAGE train` with
debughookconfig.json and profilerconfig.json in /opt/ml/input/config saves smdebug tensors of a
frozen-backbone job that `create_trial` reads on the host, and writes the profiler report."""
import json

import pytest
from test_image import TINY_JOB, job_dir, run_image

smdebug_trials = pytest.importorskip("smdebug.trials")


@pytest.mark.docker
def test_train_in_the_image_saves_tensors_and_writes_the_report(docker_image, tmp_path):
    ml = job_dir(tmp_path / "ml", {**TINY_JOB, "freeze": "true", "epochs": "2"})
    config = ml / "input" / "config"
    (config / "debughookconfig.json").write_text(json.dumps({
        "LocalPath": "/opt/ml/output/tensors", "S3OutputPath": "s3://bucket/job/debug-output",
        "HookParameters": {"save_interval": "2"},
        "CollectionConfigurations": [{"CollectionName": c} for c in ("losses", "weights", "gradients", "biases")]}))
    (config / "profilerconfig.json").write_text(json.dumps({"ProfilingParameters": {
        "ProfilingIntervalInMilliseconds": 100, "DetailedProfilingConfig": '{"StartStep": 1, "NumSteps": 2}'}}))
    proc = run_image(docker_image, ml, "train")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "saving tensors (losses, weights, gradients, biases) to /opt/ml/output/tensors" in proc.stdout
    assert "rule Dataloader triggered" in proc.stdout  # num-workers 0

    trial = smdebug_trials.create_trial(str(ml / "output" / "tensors"))
    names = trial.tensor_names()
    assert "gradient/ResNet_fc.weight" in names and "ResNet_layer4.1.conv2.weight" in names
    assert not any(n.startswith("gradient/ResNet_layer") for n in names)  # frozen backbone: no gradients
    assert trial.steps()[:2] == [0, 2]

    data = ml / "output" / "data"
    html = (data / "profiler-report.html").read_text()
    assert "Rules summary" in html and "algo-1" in html
    profile = json.loads((data / "debug" / "profile-algo-1-rank0.json").read_text())
    assert profile["interval_ms"] == 100 and profile["traces"] == ["debug/trace-algo-1-rank0-steps2-3.json"]
    assert (data / profile["traces"][0]).is_file()
