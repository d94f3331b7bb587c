"""The public port's error answers: every one a JSON body {"error", "message"}, aiohttp's own
(malformed framing, an exception in the front) and multi-model-server's ("Worker died.") included;
a 500 is a fixed message and the request id, its cause only in the log (errors.py)."""
from __future__ import annotations

import json
import logging
from http import HTTPStatus

from aiohttp import web

from .errors import internal_error_json, request_id_of

log = logging.getLogger("imgclf.serve.front")

PRODUCES = "application/json"


def json_error(status: HTTPStatus, message: str) -> web.Response:
    return web.json_response({"error": status.phrase, "message": message}, status=status)


def internal_error(request_id: str) -> web.Response:
    return web.Response(status=HTTPStatus.INTERNAL_SERVER_ERROR, text=internal_error_json(request_id),
                        content_type=PRODUCES)


class JsonErrorProtocol(web.RequestHandler):
    """aiohttp's connection handler, answering its own errors (malformed framing, oversized
    headers, an exception in `Front.handle`) with the JSON body instead of plain text."""

    def handle_error(self, request, status=500, exc=None, message=None):
        if status >= 500:
            rid = request_id_of(request.headers)
            self.log_exception("request %s from %s failed (%d) in the front", rid, request.remote, status,
                               exc_info=exc)
        else:
            log.info("refused malformed request from %s: %s", request.remote, message or exc)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started, cannot send the error")
        code = HTTPStatus(status)
        reason = str(message or exc or code.phrase).strip().splitlines()[0]
        resp = json_error(code, f"malformed HTTP request: {reason}") if status < 500 else internal_error(rid)
        resp.force_close()
        return resp


class JsonErrorServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        return JsonErrorProtocol(self, loop=self._loop, **self._kwargs)


def model_server_error(payload: bytes) -> str | None:
    """The message of an error that MMS itself wrote ({"code", "type", "message"}, e.g. "Worker
    died."), to answer in our shape; None for the handler's own JSON errors and anything else."""
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if isinstance(doc, dict) and {"code", "type", "message"} <= doc.keys() and "error" not in doc:
        return f"model server: {doc['message']} ({doc['type']})"
    return None
