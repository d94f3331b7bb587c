import json

from sagemaker_inference.errors import BaseInferenceToolkitError

from imgclf.serve.errors import BadRequest, PayloadTooLarge, ServeError, UnsupportedContentType


def test_each_error_carries_its_status_and_a_json_reason():
    for cls, status in ((BadRequest, 400), (UnsupportedContentType, 415), (PayloadTooLarge, 413)):
        e = cls("what was wrong")
        assert e.status_code == status
        assert json.loads(e.to_json()) == {"error": e.status.phrase, "message": "what was wrong"}


def test_errors_are_sagemaker_inference_errors():
    e = UnsupportedContentType("text/csv")
    assert isinstance(e, ServeError) and isinstance(e, BaseInferenceToolkitError)
    assert e.phrase == "Unsupported Media Type"
