import inspect
import json
from unittest import mock

import pytest
from sagemaker_inference.default_handler_service import DefaultHandlerService
from serve_support import MockContext, jpeg, make_artifact

from imgclf.serve import handler_service
from imgclf.serve.handler_service import HandlerService


def test_the_module_defines_exactly_one_class_as_mms_requires():
    own = [c for _, c in inspect.getmembers(handler_service, inspect.isclass) if c.__module__ == handler_service.__name__]
    assert own == [HandlerService]
    assert issubclass(HandlerService, DefaultHandlerService)


def test_initialize_and_handle(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGCLF_PRECISION", "fp32")
    service = HandlerService()
    service.initialize(MockContext(make_artifact(tmp_path / "model")))
    context = MockContext(tmp_path, [{"Content-Type": "image/jpeg"}])
    (answer,) = service.handle([{"body": jpeg()}], context)
    assert len(json.loads(answer)["predictions"][0]) == 3 and context.status == {}


def test_a_model_that_cannot_load_ends_the_worker(tmp_path):
    # MMS would log an ordinary exception from initialize and keep serving without a model
    (tmp_path / "model").mkdir()
    with pytest.raises(SystemExit):
        HandlerService().initialize(MockContext(tmp_path / "model"))


def test_an_unexpected_failure_is_a_500_with_a_json_reason_for_each_request(tmp_path):
    service = HandlerService()
    with mock.patch.object(service.handler, "handle", side_effect=RuntimeError("out of cheese")):
        context = MockContext(tmp_path, [{}, {}])
        answers = service.handle([{"body": b"a"}, {"body": b"b"}], context)
    assert [json.loads(a)["message"] for a in answers] == ["RuntimeError: out of cheese"] * 2
    assert context.status == {0: (500, "Internal Server Error"), 1: (500, "Internal Server Error")}
    assert "Traceback" not in answers[0]
