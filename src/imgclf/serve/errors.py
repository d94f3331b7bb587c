"""Errors that carry their HTTP status; the handler turns them into a short JSON reason, never a traceback."""
from __future__ import annotations

import json
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
