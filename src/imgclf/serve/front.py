"""The port SageMaker talks to. It answers `/ping` from the model's real state and passes every
other request to multi-model-server on a private port.

Why not MMS's own port: MMS answers `/ping` with 200 even while its workers are still loading the
model or have died (the body then says "Unhealthy"), and a SageMaker health check reads only the
status code. Here `/ping` is 200 only once the model is registered and a worker holds it.

Routing:
    GET  /ping          200 {"status": "Healthy"} or 503 with the reason
    POST /invocations   single model: to the model; multi-model: to the model named by
                        X-Amzn-SageMaker-Target-Model (its ".tar.gz" dropped)
    anything else       unchanged (the MMS management API: /models, /models/<name>/invoke, ...)
A body over the payload limit gets 413 with a JSON reason before it reaches the model server.
"""
from __future__ import annotations

import http.client
import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

log = logging.getLogger(__name__)

MODEL_NAME = "model"  # the single model's name inside MMS
TARGET_MODEL = "X-Amzn-SageMaker-Target-Model"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate", "content-length", "host"}
DISCARD_LIMIT = 64 * 1024 * 1024  # past this much unwanted body, close the connection instead of reading on
HEALTHY = ("Healthy", "Partial Healthy")


class Front(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], upstream_port: int, *, multi_model: bool, max_payload_bytes: int,
                 register_defaults: dict[str, int] | None = None):
        self.upstream_port = upstream_port
        self.multi_model = multi_model
        self.max_payload_bytes = max_payload_bytes
        self.register_defaults = register_defaults or {}  # added to POST /models that don't set them
        self.model_ready = threading.Event()  # single model registered with its workers (set by the server)
        self.local = threading.local()
        super().__init__(address, FrontHandler)

    def upstream(self, fresh: bool = False) -> http.client.HTTPConnection:
        """This thread's keep-alive connection to MMS."""
        if fresh or getattr(self.local, "conn", None) is None:
            if getattr(self.local, "conn", None) is not None:
                self.local.conn.close()
            self.local.conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=3600)
        return self.local.conn

    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes | None):
        """(status, reason, headers, body) from MMS; a stale keep-alive connection is retried once."""
        for attempt in (0, 1):
            conn = self.upstream(fresh=attempt > 0)
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.reason, resp.getheaders(), resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                if attempt:
                    raise
            except Exception:
                conn.close()
                self.local.conn = None
                raise

    def health(self) -> tuple[int, str]:
        if not self.multi_model and not self.model_ready.is_set():
            return HTTPStatus.SERVICE_UNAVAILABLE, "model not loaded yet"
        try:
            status, _, _, body = self.forward("GET", "/ping", {}, None)
            state = json.loads(body).get("status", "")
        except (OSError, ValueError, http.client.HTTPException):
            return HTTPStatus.SERVICE_UNAVAILABLE, "model server not answering"
        if status == 200 and state in HEALTHY:
            return HTTPStatus.OK, "Healthy"
        return HTTPStatus.SERVICE_UNAVAILABLE, f"model server says {state or status}: workers not running"


class FrontHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Front

    def log_message(self, fmt, *args):
        log.debug("%s " + fmt, self.address_string(), *args)

    def reply(self, status: int, doc: dict, reason: str | None = None) -> None:
        self.send(status, reason, [("Content-Type", "application/json")], json.dumps(doc).encode())

    def error(self, status: HTTPStatus, message: str) -> None:
        self.reply(status, {"error": status.phrase, "message": message})

    def send(self, status: int, reason: str | None, headers, body: bytes) -> None:
        self.send_response(status, reason)
        for key, value in headers:
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if urlsplit(self.path).path == "/ping":
            status, message = self.server.health()
            return self.reply(status, {"status": "Healthy" if status == 200 else "Unhealthy", "message": message})
        self.proxy()

    def do_POST(self):
        self.proxy()

    do_PUT = do_DELETE = do_POST

    def read_body(self) -> bytes | None:
        """The request body, or None after answering 413 for one over the limit."""
        limit = self.server.max_payload_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks, size = [], 0
            while True:
                n = int(self.rfile.readline().split(b";")[0], 16)
                if n == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                size += n
                if size > DISCARD_LIMIT:
                    self.close_connection = True
                    break
                chunk = self.rfile.read(n)
                self.rfile.readline()
                if size <= limit:
                    chunks.append(chunk)
        else:
            size = int(self.headers.get("Content-Length") or 0)
            if size > limit:
                if size > DISCARD_LIMIT:
                    self.close_connection = True
                else:
                    self.rfile.read(size)
                chunks = []
            else:
                chunks = [self.rfile.read(size)]
        if size > limit:
            self.error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                       f"payload of {size} bytes is over the limit of {limit} bytes")
            return None
        return b"".join(chunks)

    def route(self) -> str | None:
        """The MMS path for this request, or None after answering the client."""
        url = urlsplit(self.path)
        if url.path.rstrip("/") != "/invocations":
            return self.path
        if not self.server.multi_model:
            return f"/predictions/{MODEL_NAME}"
        target = self.headers.get(TARGET_MODEL)
        if not target:
            self.error(HTTPStatus.BAD_REQUEST, f"multi-model endpoint: name the model in the {TARGET_MODEL} header")
            return None
        name = target.removesuffix(".tar.gz").strip("/")
        return f"/models/{name}/invoke"

    def with_register_defaults(self, path: str, body: bytes) -> tuple[str, bytes]:
        """POST /models: batching and worker settings from the environment unless the call sets them."""
        defaults = self.server.register_defaults
        url = urlsplit(path)
        if self.command != "POST" or url.path.rstrip("/") != "/models" or not defaults:
            return path, body
        if body.strip():
            try:
                doc = json.loads(body)
            except ValueError:
                return path, body  # MMS answers that itself
            return path, json.dumps({**defaults, **doc}).encode()
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        return f"{url.path}?{urlencode({**defaults, **query})}", body

    def proxy(self) -> None:
        body = self.read_body()
        if body is None:
            return
        path = self.route()
        if path is None:
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        path, body = self.with_register_defaults(path, body)
        try:
            status, reason, resp_headers, resp_body = self.server.forward(
                self.command, path, headers, body if self.command in ("POST", "PUT") else None)
        except (OSError, http.client.HTTPException) as e:
            return self.error(HTTPStatus.SERVICE_UNAVAILABLE, f"model server not answering: {e}")
        self.send(status, reason, resp_headers, resp_body)
