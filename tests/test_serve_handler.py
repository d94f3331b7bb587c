import base64
import io
import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from serve_support import CLASSES, MockContext, encode, jpeg, make_artifact
from test_export import exported  # noqa: F401  (fixture: an artifact with its OpenVINO formats)

from imgclf.artifact.card import load_card
from imgclf.serve.environment import ServingEnvironment
from imgclf.serve.handler import ImageClassifierHandler, top_k_attribute, wants_verbose
from imgclf.train.presets import ClassificationPresetEval


def environment(tmp_path, **kw) -> ServingEnvironment:
    return ServingEnvironment(model_dir=tmp_path / "model", models_dir=tmp_path / "models", **kw)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_artifact(tmp_path_factory.mktemp("serve") / "model", image_size=40)


@pytest.fixture
def handler(model_dir, tmp_path):
    h = ImageClassifierHandler(environment(tmp_path, top_k=2, precision="fp32"))
    h.initialize(MockContext(model_dir))
    return h


def run(handler, bodies, headers):
    context = MockContext(Path("unused"), headers)
    answers = handler.handle([{"body": b} for b in bodies], context)
    return [json.loads(a) for a in answers], context


def test_preprocessing_comes_from_the_artifact(handler, model_dir):
    card = load_card(model_dir)
    batch = handler.preprocess([{"body": jpeg(size=(300, 200))}], MockContext(model_dir, [{"Content-Type": "image/jpeg"}]))
    assert batch.pixels.shape == (1, 3, card.eval.crop_size, card.eval.crop_size)
    img = Image.open(io.BytesIO(jpeg(size=(300, 200)))).convert("RGB")
    expected = ClassificationPresetEval.from_settings(card.eval)(img)
    assert np.allclose(batch.pixels[0], expected.numpy(), atol=0.05)  # the same transform (JPEG draft aside)


def test_a_batch_of_requests_is_one_forward_pass_with_answers_per_request(handler):
    two = json.dumps({"images": [base64.b64encode(jpeg()).decode()] * 2, "top_k": 3}).encode()
    bodies = [jpeg(), two, b"garbage", jpeg()]
    headers = [{"Content-Type": "image/jpeg"}, {"content-type": "application/json"},
               {"Content-Type": "image/png"}, {"Content-Type": "image/jpeg", "X-Amzn-SageMaker-Custom-Attributes": "top_k=1"}]
    with mock.patch.object(handler, "inference", wraps=handler.inference) as inference:
        answers, context = run(handler, bodies, headers)
    (pixels, alone), _ = inference.call_args
    assert not alone
    assert inference.call_count == 1 and pixels.shape[0] == 4  # 1 + 2 + 1 images; the bad one left out
    assert [len(a["predictions"]) for a in answers if "predictions" in a] == [1, 2, 1]
    assert [len(p) for p in answers[0]["predictions"]] == [2]  # the environment's default top_k
    assert [len(p) for p in answers[1]["predictions"]] == [3, 3]  # top_k from the JSON body
    assert [len(p) for p in answers[3]["predictions"]] == [1]  # top_k from the custom attributes header
    labels = answers[1]["predictions"][0]
    assert {p["label"] for p in labels} == set(CLASSES)
    assert abs(sum(p["probability"] for p in labels) - 1) < 1e-4
    assert labels == sorted(labels, key=lambda p: -p["probability"])
    assert context.status == {2: (400, "Bad Request")}
    assert answers[2]["error"] == "Bad Request" and "image" in answers[2]["message"]
    assert set(context.content_types.values()) == {"application/json"}


def test_a_batch_of_only_bad_requests_skips_the_network(handler):
    with mock.patch.object(handler, "inference") as inference:
        answers, context = run(handler, [b"x"], [{"Content-Type": "text/plain"}])
    inference.assert_not_called()
    assert context.status[0][0] == 415 and "text/plain" in answers[0]["message"]


def test_same_answers_for_the_same_image_alone_or_in_a_batch(handler):
    alone, _ = run(handler, [jpeg(color=(20, 90, 200))], [{"Content-Type": "image/jpeg"}])
    batched, _ = run(handler, [jpeg(), jpeg(color=(20, 90, 200))], [{"Content-Type": "image/jpeg"}] * 2)
    for a, b in zip(alone[0]["predictions"][0], batched[1]["predictions"][0]):
        assert a["label"] == b["label"] and abs(a["probability"] - b["probability"]) < 1e-4


@pytest.mark.parametrize("value, k", [("top_k=3", 3), ("foo=bar, top_k=2", 2), ("foo=bar", None), (None, None)])
def test_top_k_attribute(value, k):
    assert top_k_attribute(value) == k


def test_bad_top_k_attribute_is_a_client_error(handler):
    answers, context = run(handler, [jpeg()], [{"Content-Type": "image/jpeg", "X-Amzn-SageMaker-Custom-Attributes": "top_k=all"}])
    assert context.status[0][0] == 400 and "top_k" in answers[0]["message"]


def test_top_k_is_capped_at_the_number_of_classes(handler):
    answers, _ = run(handler, [jpeg()], [{"Content-Type": "image/jpeg", "X-Amzn-SageMaker-Custom-Attributes": "top_k=50"}])
    assert len(answers[0]["predictions"][0]) == len(CLASSES)


def test_inference_runs_channels_last_without_autograd(handler):
    pixels = np.random.default_rng(0).standard_normal((2, 3, 40, 40), dtype=np.float32)
    seen = {}

    def hook(module, args, output):
        seen["channels_last"] = args[0].is_contiguous(memory_format=torch.channels_last)
        seen["inference_mode"] = torch.is_inference_mode_enabled()

    handle = handler.runner.model.conv1.register_forward_hook(hook)
    try:
        probs = handler.inference(pixels)
    finally:
        handle.remove()
    assert seen == {"channels_last": True, "inference_mode": True}
    assert probs.shape == (2, len(CLASSES)) and np.allclose(probs.sum(1), np.ones(2))


def test_pixel_limit_comes_from_the_environment(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    h = ImageClassifierHandler(environment(tmp_path, precision="fp32", max_image_pixels=1000))
    h.initialize(MockContext(model_dir))
    answers, context = run(h, [encode(Image.new("RGB", (50, 50)), "PNG")], [{"Content-Type": "image/png"}])
    assert context.status[0][0] == 413 and "decompression bomb" in answers[0]["message"]


@pytest.mark.openvino
def test_an_exported_artifact_is_served_by_its_int8_model(exported, tmp_path):
    model_dir, _, _, _ = exported
    h = ImageClassifierHandler(environment(tmp_path, precision="int8", top_k=1))
    h.initialize(MockContext(model_dir))
    assert h.runner.name == "openvino int8"
    answers, context = run(h, [jpeg(), b"garbage"], [{"Content-Type": "image/jpeg"}] * 2)
    assert len(answers[0]["predictions"][0]) == 1 and context.status[1][0] == 400


@pytest.mark.openvino
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_request_alone_runs_on_the_lone_threads_with_the_same_answers(exported, tmp_path, precision):
    """One thread per worker; a request that the front says is alone (X-Imgclf-In-Flight: 1) runs
    on the network compiled for `lone_threads`, any other on the worker's own, with the same answers."""
    model_dir, _, _, _ = exported
    h = ImageClassifierHandler(environment(tmp_path, precision=precision, top_k=3, torch_threads=1, lone_threads=2))
    h.initialize(MockContext(model_dir))
    assert (h.runner.threads, h.lone.threads) == (1, 2) and h.lone.name == h.runner.name
    body = jpeg(size=(90, 300), color=(20, 90, 200))
    answers, calls = {}, {}
    for in_flight in ("1", "3", None):
        headers = {"Content-Type": "image/jpeg", **({"X-Imgclf-In-Flight": in_flight} if in_flight else {})}
        with mock.patch.object(h.lone, "compiled", wraps=h.lone.compiled) as lone:
            answers[in_flight], _ = run(h, [body], [headers])
        calls[in_flight] = lone.call_count
    assert calls == {"1": 1, "3": 0, None: 0}
    with mock.patch.object(h.lone, "compiled", wraps=h.lone.compiled) as lone:
        run(h, [body, body], [{"Content-Type": "image/jpeg", "X-Imgclf-In-Flight": "1"}] * 2)  # a batch is not alone
    lone.assert_not_called()
    alone, shared = answers["1"][0]["predictions"][0], answers["3"][0]["predictions"][0]
    assert [p["label"] for p in alone] == [p["label"] for p in shared]
    assert np.allclose([p["probability"] for p in alone], [p["probability"] for p in shared], atol=1e-5)


@pytest.mark.parametrize("accept, verbose", [("application/json;verbose", True), ("application/json; verbose", True),
                                             ("text/csv, application/json;verbose;q=0.9", True),
                                             ("application/json", False), ("*/*", False), (None, False)])
def test_wants_verbose(accept, verbose):
    assert wants_verbose(accept) is verbose


def test_verbose_answer_has_every_class_in_jumpstarts_shape_and_the_default_is_unchanged(handler):
    two = json.dumps({"images": [base64.b64encode(jpeg()).decode()] * 2}).encode()
    verbose = {"Accept": "application/json;verbose"}
    answers, context = run(handler, [jpeg(), jpeg(), two], [{"Content-Type": "image/jpeg", **verbose},
                                                            {"Content-Type": "image/jpeg"},
                                                            {"Content-Type": "application/json", **verbose}])
    one, default, several = answers
    assert set(one) == {"labels", "probabilities", "predicted_label"}
    assert one["labels"] == list(CLASSES) and len(one["probabilities"]) == len(CLASSES)
    assert abs(sum(one["probabilities"]) - 1) < 1e-4
    assert one["predicted_label"] == one["labels"][int(np.argmax(one["probabilities"]))]
    top = default["predictions"][0]  # the same image, default answer: top-k as before
    assert len(top) == 2 and top[0]["label"] == one["predicted_label"]
    assert top[0]["probability"] == pytest.approx(max(one["probabilities"]), abs=1e-6)
    assert isinstance(several, list) and [a["labels"] for a in several] == [list(CLASSES)] * 2
    assert set(context.content_types.values()) == {"application/json"}


def test_a_500_in_a_batch_answers_a_fixed_message_and_the_id_and_logs_the_cause(handler, monkeypatch, caplog):
    from imgclf.serve.spool import SPOOL_DIR_ENV, SPOOLED_BODY

    monkeypatch.delenv(SPOOL_DIR_ENV, raising=False)  # a worker without the front's spool folder: our fault
    spooled = {"Content-Type": "image/jpeg", SPOOLED_BODY: "body-" + "0" * 32, "X-Amzn-RequestId": "c0ffee-7"}
    with caplog.at_level("ERROR"):
        (ok, failed), context = run(handler, [jpeg(), b""], [{"Content-Type": "image/jpeg"}, spooled])
    assert ok["predictions"] and 0 not in context.status  # the rest of the batch is answered
    assert context.status[1] == (500, "Internal Server Error")
    assert failed["request_id"] == "c0ffee-7" and "spool" not in json.dumps(failed).lower()
    assert "c0ffee-7" in caplog.text and "SpoolError" in caplog.text and "no spooled body" in caplog.text and "Traceback" in caplog.text
