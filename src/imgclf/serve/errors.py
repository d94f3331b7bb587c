"""Errors that carry their HTTP status; the handler turns them into a short JSON reason, never a traceback.

A 500 is our fault, not the request's: its answer is a fixed message and the request's id, and the
log line with the same id holds the cause with its traceback (an exception's text can tell a
client about the host: paths, versions, memory).
"""
from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from http import HTTPStatus

from sagemaker_inference.errors import BaseInferenceToolkitError


class ServeError(BaseInferenceToolkitError):
    """A request the endpoint refuses: `status` goes to the client with `{"error": ..., "message": ...}`."""

    status = HTTPStatus.BAD_REQUEST

    def __init__(self, message: str):
        super().__init__(int(self.status), message, self.status.phrase)

    def to_json(self) -> str:
        return json.dumps({"error": self.status.phrase, "message": self.message})


class BadRequest(ServeError):
    """Unreadable body: corrupt, truncated or empty image, bad JSON, wrong array shape."""


class UnsupportedContentType(ServeError):
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE


class PayloadTooLarge(ServeError):
    """Over the payload limit, or an image with more pixels than the decoder accepts."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


REQUEST_ID_HEADER = "X-Amzn-RequestId"  # SageMaker's id of an invocation
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # what an id may look like (SageMaker's is a UUID): nothing else is echoed
INTERNAL_ERROR_MESSAGE = "internal error: the endpoint's log has its cause under request_id"


def request_id_of(headers: Mapping[str, str], fallback: str | None = None) -> str:
    """SageMaker's id of a request when it sent one, else `fallback` (the model server's), else a new one."""
    given = next((v for k, v in headers.items() if k.lower() == REQUEST_ID_HEADER.lower()), "")
    for candidate in (given, fallback or ""):
        if REQUEST_ID.fullmatch(candidate):
            return candidate
    return uuid.uuid4().hex


def internal_error_json(request_id: str) -> str:
    """The answer of every 500: a fixed message and the request's id, the cause only in the log."""
    return json.dumps({"error": HTTPStatus.INTERNAL_SERVER_ERROR.phrase, "message": INTERNAL_ERROR_MESSAGE,
                       "request_id": request_id})
