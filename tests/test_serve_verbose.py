"""`Accept: application/json;verbose` through the real server (multi-model-server on 127.0.0.1):
every class's probability in JumpStart's shape, on a single-model and a multi-model endpoint."""
import base64
import json

import pytest
import requests
from serve_support import CLASSES, jpeg, make_artifact, require_mms, serve

pytestmark = pytest.mark.mms
ENV = {"IMGCLF_PRECISION": "fp32"}
VERBOSE = {"Accept": "application/json;verbose"}


def post(server, body, content_type, path="/invocations", **headers):
    return requests.post(server.url + path, data=body, headers={"Content-Type": content_type, **headers}, timeout=120)


def check_verbose(answer: dict, classes) -> None:
    assert set(answer) == {"labels", "probabilities", "predicted_label"}
    assert answer["labels"] == list(classes) and abs(sum(answer["probabilities"]) - 1) < 1e-4
    assert answer["predicted_label"] == classes[answer["probabilities"].index(max(answer["probabilities"]))]


def test_single_model_endpoint_answers_verbose_and_default(tmp_path):
    require_mms()
    model_dir = make_artifact(tmp_path / "model", image_size=32)
    with serve(tmp_path, ["--model-dir", str(model_dir), "--workers", "1", "--top-k", "2"], ENV) as s:
        s.wait_healthy()
        r = post(s, jpeg(), "image/jpeg", **VERBOSE)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
        check_verbose(r.json(), CLASSES)
        default = post(s, jpeg(), "image/jpeg").json()["predictions"][0]  # unchanged: top-k
        assert len(default) == 2 and default[0]["label"] == r.json()["predicted_label"]
        images = [base64.b64encode(jpeg(color=c)).decode() for c in ((200, 0, 0), (0, 0, 200))]
        several = post(s, json.dumps({"instances": images}), "application/json", **VERBOSE).json()
        assert isinstance(several, list) and len(several) == 2
        for answer in several:
            check_verbose(answer, CLASSES)


def test_multi_model_endpoint_answers_verbose_per_model(tmp_path):
    require_mms()
    models = tmp_path / "models"
    make_artifact(models / "shapes" / "model", classes=("circle", "square"), seed=1)
    env = {**ENV, "SAGEMAKER_MULTI_MODEL": "true", "SAGEMAKER_BASE_DIR": str(tmp_path)}
    with serve(tmp_path, ["--workers", "1"], env) as s:
        s.wait_healthy()
        r = requests.post(s.url + "/models", json={"model_name": "shapes", "url": str(models / "shapes" / "model")},
                          timeout=240)
        assert r.status_code == 200, r.text
        target = {"X-Amzn-SageMaker-Target-Model": "shapes.tar.gz"}
        for path in ("/models/shapes/invoke", "/invocations"):
            r = post(s, jpeg(), "image/jpeg", path, **target, **VERBOSE)
            assert r.status_code == 200, r.text
            check_verbose(r.json(), ("circle", "square"))
