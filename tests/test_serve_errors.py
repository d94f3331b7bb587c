import json

from sagemaker_inference.errors import BaseInferenceToolkitError

from imgclf.serve.errors import (
    INTERNAL_ERROR_MESSAGE,
    BadRequest,
    PayloadTooLarge,
    ServeError,
    UnsupportedContentType,
    internal_error_json,
    request_id_of,
)


def test_each_error_carries_its_status_and_a_json_reason():
    for cls, status in ((BadRequest, 400), (UnsupportedContentType, 415), (PayloadTooLarge, 413)):
        e = cls("what was wrong")
        assert e.status_code == status
        assert json.loads(e.to_json()) == {"error": e.status.phrase, "message": "what was wrong"}


def test_errors_are_sagemaker_inference_errors():
    e = UnsupportedContentType("text/csv")
    assert isinstance(e, ServeError) and isinstance(e, BaseInferenceToolkitError)
    assert e.phrase == "Unsupported Media Type"


def test_the_request_id_is_sagemakers_else_the_model_servers_else_a_new_one():
    assert request_id_of({"x-amzn-requestid": "c0ffee-1"}, "mms-0") == "c0ffee-1"  # any case of the header
    assert request_id_of({}, "mms-0") == "mms-0"
    fresh = request_id_of({"X-Amzn-RequestId": "<script>\u2028"})  # not an id: never echoed
    assert len(fresh) == 32 and fresh != request_id_of({})


def test_a_500_answer_is_a_fixed_message_and_the_request_id():
    assert json.loads(internal_error_json("c0ffee-1")) == {
        "error": "Internal Server Error", "message": INTERNAL_ERROR_MESSAGE, "request_id": "c0ffee-1"}
