"""imgclf-serve for real: multi-model-server on 127.0.0.1 with tiny model artifacts."""
import base64
import io
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
import pytest
import requests
from PIL import Image
from serve_support import CLASSES, encode, jpeg, make_artifact, require_mms, serve

from imgclf.serve.environment import ServingEnvironment
from imgclf.serve.model_server import mms_config, register_defaults

pytestmark = pytest.mark.mms
SERVER_ENV = {"IMGCLF_PRECISION": "fp32", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "1", "IMGCLF_MAX_IMAGE_PIXELS": "1000000"}


def test_mms_config_keeps_the_model_server_private_and_batched(tmp_path):
    env = ServingEnvironment(model_dir=tmp_path, models_dir=tmp_path, workers=3, batch_size=4, max_batch_delay_ms=7,
                             response_timeout_s=90, max_payload_bytes=2 * 1024 * 1024)
    props = dict(line.split("=", 1) for line in mms_config(env, 23456).splitlines())
    assert props["inference_address"] == props["management_address"] == "http://127.0.0.1:23456"
    assert props["default_service_handler"] == "imgclf.serve.mms_entry:handle"
    # MMS restarts a worker only past the start-up timeout and past the front's response timeout, in seconds
    assert props["default_workers_per_model"] == "3" and props["default_response_timeout_seconds"] == "600"
    assert "default_response_timeout" not in props  # minutes in MMS 1.1.11
    assert int(props["max_request_size"]) > env.max_payload_bytes  # the front enforces the limit with a JSON reason
    assert "-Xmx512m" in props["vmargs"] and "-XX:-UseContainerSupport" in props["vmargs"]
    own = ServingEnvironment(model_dir=tmp_path, models_dir=tmp_path, vmargs="-Xmx2g")
    assert dict(line.split("=", 1) for line in mms_config(own, 1).splitlines())["vmargs"] == "-Xmx2g"
    assert register_defaults(env) == {"batch_size": 4, "max_batch_delay": 7, "initial_workers": 3}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_mms()
    tmp = tmp_path_factory.mktemp("serve")
    model_dir = make_artifact(tmp / "model", image_size=32)
    with serve(tmp, ["--model-dir", str(model_dir), "--workers", "1", "--batch-size", "8",
                     "--max-batch-delay-ms", "300", "--top-k", "2"], SERVER_ENV) as s:
        s.wait_healthy()
        yield s


def post(server, body, content_type, path="/invocations", **headers):
    """POST with this Content-Type (None: without one)."""
    return requests.post(server.url + path, data=body, headers={"Content-Type": content_type, **headers}, timeout=120)


def bomb() -> bytes:
    return encode(Image.new("1", (2000, 2000)), "PNG")  # 4 MP in a few kB, over the 1 MP limit


def npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


BAD_INPUTS = {
    "unknown content type": (jpeg(), "text/csv", 415, "not supported"),
    "corrupt image": (b"\xff\xd8\xff\xe0 definitely not a jpeg", "image/jpeg", 400, "image"),
    "truncated image": (jpeg(size=(300, 300))[:600], "image/jpeg", 400, "truncated"),
    "empty body": (b"", "image/png", 400, "empty"),
    "decompression bomb": (bomb(), "image/png", 413, "decompression bomb"),
    "payload over the limit": (b"\xff" * (1024 * 1024 + 1), "image/jpeg", 413, "over the limit"),
    "bad JSON": (b'{"image": ', "application/json", 400, "bad JSON"),
    "wrong npy shape": (npy(np.zeros((4, 4, 4, 4, 3), np.uint8)), "application/x-npy", 400, "shape"),
    "no content type, not an image": (b"plain words", None, 415, "Content-Type"),
    "deeply nested JSON": (b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "nested too deeply"),
    "instances that are not base64": (b'{"instances": [12]}', "application/json", 400, "base64"),
    "npy of float32": (npy(np.zeros((8, 8, 3), np.float32)), "application/x-npy", 400, "uint8"),
}


def test_ping_means_the_model_answers(server):
    r = requests.get(server.url + "/ping")
    assert r.status_code == 200 and r.json()["status"] == "Healthy"
    r = post(server, jpeg(), "image/jpeg")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    (top,) = r.json()["predictions"]
    assert len(top) == 2 and {p["label"] for p in top} <= set(CLASSES)


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_gets_a_4xx_with_a_json_reason_and_the_next_request_succeeds(server, name):
    body, content_type, status, words = BAD_INPUTS[name]
    r = post(server, body, content_type)
    assert r.status_code == status, r.text
    assert r.json()["error"] and words in r.json()["message"] and "Traceback" not in r.text
    assert post(server, jpeg(), "image/jpeg").status_code == 200


def test_accept_without_json_is_406(server):
    r = post(server, jpeg(), "image/jpeg", Accept="text/csv")
    assert r.status_code == 406 and "application/json" in r.json()["message"]
    assert post(server, jpeg(), "image/jpeg", Accept="text/csv, application/json;q=0.5").status_code == 200


def test_untyped_images_and_sagemaker_instances_are_served(server):
    r = post(server, jpeg(), None)  # no Content-Type: the JPEG's own bytes say what it is
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1
    one = base64.b64encode(jpeg()).decode()
    r = post(server, json.dumps({"instances": [one, {"b64": one}]}), "application/json")
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2


def test_several_images_in_one_request_and_top_k(server):
    images = [base64.b64encode(jpeg(color=c)).decode() for c in ((200, 0, 0), (0, 200, 0), (0, 0, 200))]
    r = post(server, json.dumps({"images": images, "top_k": 3}), "application/json")
    assert r.status_code == 200 and [len(p) for p in r.json()["predictions"]] == [3, 3, 3]
    r = post(server, npy(np.zeros((2, 20, 20, 3), np.uint8)), "application/x-npy",
             **{"X-Amzn-SageMaker-Custom-Attributes": "top_k=1"})
    assert r.status_code == 200 and [len(p) for p in r.json()["predictions"]] == [1, 1]
    r = post(server, encode(Image.new("RGBA", (30, 30)), "PNG"), "application/x-image")
    assert r.status_code == 200


def test_concurrent_requests_are_batched(server):
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: post(server, jpeg(), "image/jpeg").status_code, range(16)))
    assert statuses == [200] * 16
    sizes = [int(n) for n in re.findall(r"batch of (\d+) requests", server.log_text())]
    assert max(sizes) > 1, sizes


def test_sigterm_stops_the_server_and_its_workers(server):
    children = psutil.Process(server.process.pid).children(recursive=True)
    assert any("model_service_worker" in " ".join(c.cmdline()) for c in children)
    assert server.stop() == 0
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []


def test_a_model_that_cannot_load_never_reports_healthy(tmp_path):
    require_mms()
    model_dir = make_artifact(tmp_path / "model")
    (model_dir / "model.pt").write_bytes(b"not a state dict")
    with serve(tmp_path, ["--model-dir", str(model_dir), "--workers", "1"], SERVER_ENV) as s:
        pings = []
        while s.process.poll() is None:
            try:
                pings.append(requests.get(s.url + "/ping", timeout=5).status_code)
            except requests.ConnectionError:
                pass
        assert s.process.returncode == 1
        assert 200 not in pings and 503 in pings
        assert "could not load" in s.log_text()


def test_multi_model_endpoint_loads_routes_and_unloads(tmp_path):
    require_mms()
    models = tmp_path / "models"
    make_artifact(models / "colours" / "model", classes=("blue", "green", "red"))
    make_artifact(models / "shapes" / "model", classes=("circle", "square"), seed=1)
    env = {**SERVER_ENV, "SAGEMAKER_MULTI_MODEL": "true", "SAGEMAKER_BASE_DIR": str(tmp_path)}
    with serve(tmp_path, ["--workers", "1"], env) as s:
        s.wait_healthy()  # a multi-model endpoint is healthy with no model loaded
        for name in ("colours", "shapes"):  # as SageMaker calls it: a JSON body
            r = requests.post(s.url + "/models", json={"model_name": name, "url": str(models / name / "model")}, timeout=240)
            assert r.status_code == 200, r.text
        described = requests.get(s.url + "/models/shapes").json()
        described = described[0] if isinstance(described, list) else described
        assert described["batchSize"] == 8  # the environment's batching, not MMS's batch size of 1
        listed = {m["modelName"] for m in requests.get(s.url + "/models").json()["models"]}
        assert listed == {"colours", "shapes"}

        def labels(r):
            assert r.status_code == 200, r.text
            return {p["label"] for p in r.json()["predictions"][0]}

        # SageMaker invokes /models/<name>/invoke with the original TargetModel in a header
        target = {"X-Amzn-SageMaker-Target-Model": "shapes.tar.gz"}
        assert labels(post(s, jpeg(), "image/jpeg", "/models/shapes/invoke", **target)) == {"circle", "square"}
        # locally, /invocations is routed by the header
        assert labels(post(s, jpeg(), "image/jpeg", **target)) == {"circle", "square"}
        assert labels(post(s, jpeg(), "image/jpeg", **{"X-Amzn-SageMaker-Target-Model": "colours"})) == set(CLASSES)
        r = post(s, b"oops", "image/jpeg", **target)
        assert r.status_code == 400 and "image" in r.json()["message"]

        assert requests.delete(s.url + "/models/shapes", timeout=60).status_code == 200
        assert post(s, jpeg(), "image/jpeg", **target).status_code == 404
        assert labels(post(s, jpeg(), "image/jpeg", **{"X-Amzn-SageMaker-Target-Model": "colours"})) == set(CLASSES)


def test_a_model_slower_than_its_timeout_gets_a_504_and_the_server_keeps_serving(tmp_path):
    """The response timeout is the front's, in seconds, end to end: a batch that takes longer gets a
    504 with a JSON reason at the timeout, its worker finishes it, and the next request is answered."""
    require_mms()
    model_dir = make_artifact(tmp_path / "model", image_size=224)
    env = {**SERVER_ENV, "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS": "1", "IMGCLF_MAX_IMAGE_PIXELS": "40000000",
           "SAGEMAKER_MAX_PAYLOAD_IN_MB": "6"}
    with serve(tmp_path, ["--model-dir", str(model_dir), "--workers", "1"], env) as s:
        s.wait_healthy()
        slow = npy(np.random.default_rng(0).integers(0, 255, (64, 160, 160, 3), np.uint8))  # 64 images in one batch
        start = time.monotonic()
        r = post(s, slow, "application/x-npy")
        assert r.status_code == 504 and time.monotonic() - start < 10
        assert r.json() == {"error": "Gateway Timeout",
                            "message": "the model did not answer within the response timeout of 1 s"}
        deadline = time.monotonic() + 120
        while (answer := post(s, jpeg(), "image/jpeg")).status_code == 504 and time.monotonic() < deadline:
            pass  # the worker is still on the slow batch
        assert answer.status_code == 200 and answer.json()["predictions"]
        assert requests.get(s.url + "/ping", timeout=5).status_code == 200
        assert "Backend worker did not respond" not in s.log_text()  # MMS never restarted the worker


def test_a_body_too_large_for_memory_reaches_the_worker_as_a_file(tmp_path):
    """Bodies over IN_MEMORY_BYTES go to disk in the front and pass to the worker as a file (spool.py),
    which the front deletes once answered; the header that names it is the front's alone."""
    require_mms()
    model_dir = make_artifact(tmp_path / "model", image_size=32)
    env = {**SERVER_ENV, "SAGEMAKER_MAX_PAYLOAD_IN_MB": "20", "IMGCLF_MAX_IMAGE_PIXELS": "40000000",
           "TMPDIR": str(tmp_path)}
    big = npy(np.full((3, 1200, 1000, 3), (200, 20, 20), np.uint8))  # 10.8 MB, over the 6 MiB kept in memory
    with serve(tmp_path, ["--model-dir", str(model_dir), "--workers", "1"], env) as s:
        s.wait_healthy()
        r = post(s, big, "application/x-npy")
        assert r.status_code == 200, r.text
        assert len(r.json()["predictions"]) == 3
        assert not list(tmp_path.glob("imgclf-serve-*/spool/body-*"))  # deleted once answered
        forged = post(s, jpeg(), "image/jpeg", **{"X-Imgclf-Spooled-Body": "body-" + "0" * 32})
        assert forged.status_code == 200  # the client's header was dropped: its own body was read
        assert post(s, b"\xff" * (21 * 1024 * 1024), "image/jpeg").status_code == 413
