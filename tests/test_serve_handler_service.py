import json
import logging
import os

import pytest
from sagemaker_inference.default_handler_service import DefaultHandlerService
from sagemaker_inference.transformer import Transformer
from serve_support import MockContext, jpeg, make_artifact

from imgclf.serve.handler_service import HandlerService


def test_the_service_is_sagemaker_inferences_with_a_transformer():
    service = HandlerService()
    assert isinstance(service, DefaultHandlerService) and isinstance(service.transformer, Transformer)
    assert service.transformer is service._service  # where DefaultHandlerService.handle sends each batch


def test_initialize_and_handle(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGCLF_PRECISION", "fp32")
    service = HandlerService()
    service.initialize(MockContext(make_artifact(tmp_path / "model")))
    context = MockContext(tmp_path, [{"Content-Type": "image/jpeg"}])
    (answer,) = service.handle([{"body": jpeg()}], context)
    assert len(json.loads(answer)["predictions"][0]) == 3 and context.status == {}
    assert "model/code" not in os.environ.get("PYTHONPATH", "")  # no code of the artifact runs


def test_a_model_that_cannot_load_ends_the_worker(tmp_path):
    # MMS would log an ordinary exception from initialize and keep serving without a model
    (tmp_path / "model").mkdir()
    with pytest.raises(SystemExit):
        HandlerService().initialize(MockContext(tmp_path / "model"))


def test_an_unexpected_failure_is_a_500_with_a_fixed_message_and_the_request_id(tmp_path, caplog):
    service = HandlerService()  # a batch before the model loaded: the handler fails on what it lacks
    context = MockContext(tmp_path, [{"X-Amzn-RequestId": "5e1f0a2c-sagemaker"}, {}])
    with caplog.at_level(logging.ERROR):
        answers = service.handle([{"body": b"a"}, {"body": b"b"}], context)
    # SageMaker's id when it sent one, else the model server's
    assert [json.loads(a)["request_id"] for a in answers] == ["5e1f0a2c-sagemaker", "mms-1"]
    assert all(json.loads(a)["error"] == "Internal Server Error" and "AttributeError" not in a and "Traceback" not in a
               for a in answers)
    assert context.status == {0: (500, "Internal Server Error"), 1: (500, "Internal Server Error")}
    (record,) = caplog.records
    assert "5e1f0a2c-sagemaker" in record.getMessage() and "mms-1" in record.getMessage()
    assert "AttributeError: 'ImageClassifierHandler' object has no attribute" in caplog.text and "Traceback" in caplog.text
