"""The port SageMaker talks to, served by aiohttp. It answers `/ping` from the model's real state,
refuses what the model server would answer badly, and passes every other request to
multi-model-server on a private port.

Why not MMS's own port: MMS answers `/ping` with 200 even while its workers are still loading the
model or have died (the body then says "Unhealthy"), answers a body without a content type with a
500 and a Java exception name, and takes any Accept header. Here `/ping` is 200 only once the
model is registered and a worker holds it, and every client fault is a 4xx with a JSON reason.

Routing:
    GET  /ping          200 {"status": "Healthy"} or 503 with the reason; HEAD /ping the same
                        status and headers without the body (load balancers' health checks)
    POST /invocations   single model: to the model; multi-model: to the model named by
                        X-Amzn-SageMaker-Target-Model (its ".tar.gz" dropped)
    multi-model only    the MMS management API (/models, /models/<name>/invoke, ...), with
                        POST /models checked and completed first (registration.py)
    anything else       404
Refused here, each with {"error": ..., "message": ...}: malformed HTTP framing (400, by aiohttp's
parser), a body over the payload limit (413), an invocation whose body has no usable content type
and is not an image, JSON or .npy (415), or whose Accept excludes JSON (406). Every request goes on
with its X-Amzn-RequestId (SageMaker's, else a new one); a 500, the front's own or the model
server's, answers a fixed message and that id, the cause only in the log (errors.py).
"""
from __future__ import annotations

import asyncio
import logging
import socket
import threading
from http import HTTPStatus
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from . import registration, spool
from .environment import IN_FLIGHT_HEADER, IN_MEMORY_BYTES, MODEL_NAME
from .errors import REQUEST_ID_HEADER, request_id_of
from .json_errors import PRODUCES, JsonErrorServer, internal_error, json_error, model_server_error
from .sniffing import UNTYPED, sniff

log = logging.getLogger(__name__)

TARGET_MODEL = "X-Amzn-SageMaker-Target-Model"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate", "content-length", "host"}
# aiohttp decompresses a request body sent with Content-Encoding (the payload limit counts the
# decompressed bytes, so a gzip bomb stops at the limit); the model server gets it plain
REQUEST_ONLY = {"content-encoding"}
HEALTHY = ("Healthy", "Partial Healthy")
ACCEPTS_JSON = {"*/*", "application/*", PRODUCES}
ERROR_STATUSES = {s.value for s in HTTPStatus if s >= 400}
UNBOUNDED = aiohttp.ClientTimeout(total=None, sock_connect=10)  # management calls: loading a model waits on MMS
DISCARD_LIMIT = 64 * 1024 * 1024  # past this much unwanted body, close the connection instead of reading on


class Front:
    """The public port. `start` and `stop` run on an asyncio loop; `model_ready` is set from any thread."""

    def __init__(self, upstream_port: int, *, multi_model: bool, max_payload_bytes: int,
                 register_defaults: dict[str, int] | None = None, models_dir: Path | None = None,
                 stage_dir: Path | None = None, upstream_timeout_s: float = 3600, stop_grace_s: float = 15,
                 spool_dir: Path | None = None):
        self.upstream = f"http://127.0.0.1:{upstream_port}"
        self.multi_model = multi_model
        self.max_payload_bytes = max_payload_bytes
        self.register_defaults = register_defaults or {}  # added to POST /models that don't set them
        self.models_dir = models_dir  # multi-model: where models may be loaded from
        self.stage_dir = stage_dir  # ... and where their archives are extracted
        self.upstream_timeout = aiohttp.ClientTimeout(total=upstream_timeout_s, sock_connect=10)
        self.upstream_timeout_s = upstream_timeout_s
        self.spool_dir = spool_dir  # bodies over IN_MEMORY_BYTES go to a file here (spool.py); None: kept in memory
        self.stop_grace_s = stop_grace_s
        self.model_ready = threading.Event()  # single model registered with its workers (set by the server)
        self.in_flight = 0  # invocations passed on and not yet answered
        self.session: aiohttp.ClientSession | None = None
        self.runner: web.ServerRunner | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port; returns the port (the kernel's choice when 0)."""
        # TCP_NODELAY both ways (aiohttp's default), so no request waits for a delayed ACK
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=self.upstream_timeout,
                                             auto_decompress=False, skip_auto_headers=("User-Agent",))
        server = JsonErrorServer(self.handle, access_log=None, max_field_size=16384, lingering_time=5.0)
        self.runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=self.stop_grace_s)
        await self.runner.setup()
        sock = socket.create_server((host, port), backlog=1024)
        await web.SockSite(self.runner, sock, backlog=1024).start()
        return sock.getsockname()[1]

    async def stop(self) -> None:
        """Stop listening, let requests in flight finish for up to `stop_grace_s`, then close."""
        if self.runner is not None:
            await self.runner.cleanup()
        if self.session is not None:
            await self.session.close()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method in ("GET", "HEAD") and request.path == "/ping":  # aiohttp sends no body to a HEAD
            status, message = await self.health()
            return web.json_response({"status": "Healthy" if status == 200 else "Unhealthy", "message": message},
                                     status=status)
        if not self.multi_model and request.path.rstrip("/") != "/invocations":
            return json_error(HTTPStatus.NOT_FOUND, f"{request.method} {request.path}: this endpoint serves "
                                                    "GET /ping and POST /invocations")
        try:
            body = await self.read_body(request)
        except HttpProcessingError as e:  # framing broken inside the body (a chunk size that is not hex)
            resp = json_error(HTTPStatus.BAD_REQUEST, f"malformed HTTP request body: {e.message}")
            resp.force_close()
            return resp
        if body is None:
            resp = json_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                              f"payload over the limit of {self.max_payload_bytes} bytes"
                              + (f" ({request.content_length} bytes)" if request.content_length else ""))
            if (request.content_length or DISCARD_LIMIT + 1) > DISCARD_LIMIT:
                resp.force_close()  # else aiohttp reads and drops the rest, and the connection stays open
            return resp
        spooled = body if isinstance(body, spool.Spooled) else None
        try:
            return await self.pass_on(request, spooled.head if spooled else body, spooled)
        finally:
            if spooled:
                spooled.path.unlink(missing_ok=True)

    async def pass_on(self, request: web.BaseRequest, body: bytes, spooled: spool.Spooled | None) -> web.StreamResponse:
        """Check, route and forward a request whose body was read (`spooled`: to a file)."""
        path = request.path_qs
        ours = {spool.SPOOLED_BODY.lower(), REQUEST_ID_HEADER.lower(), IN_FLIGHT_HEADER.lower()}
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP | REQUEST_ONLY | ours}
        headers[REQUEST_ID_HEADER] = request_id_of(request.headers)  # one id in the front's log and the worker's
        if spooled:
            headers[spool.SPOOLED_BODY] = spooled.path.name
        if is_invocation(request):
            refusal = self.check_invocation(request, body, headers)
            if refusal is not None:
                return refusal
            if request.path.rstrip("/") == "/invocations":
                path = self.route(request)
                if path is None:
                    return json_error(HTTPStatus.BAD_REQUEST,
                                      f"multi-model endpoint: name the model in the {TARGET_MODEL} header")
        elif request.method == "POST" and request.path.rstrip("/") == "/models":
            try:
                path, body = await asyncio.to_thread(registration.complete, request.path, request.query_string, body,
                                                     self.register_defaults, self.models_dir, self.stage_dir)
            except registration.RegistrationError as e:
                return json_error(e.status, str(e))
        if not is_invocation(request):
            return await self.forward(request.method, path, headers, b"" if spooled else body)
        self.in_flight += 1
        headers[IN_FLIGHT_HEADER] = str(self.in_flight)
        try:
            return await self.forward(request.method, path, headers, b"" if spooled else body, answer_type=PRODUCES)
        finally:
            self.in_flight -= 1

    async def read_body(self, request: web.BaseRequest) -> bytes | spool.Spooled | None:
        """The request body, or None when it is over the limit (the rest is left unread); past
        IN_MEMORY_BYTES an invocation's body goes on into a file as it arrives (spool.py)."""
        limit = self.max_payload_bytes
        if request.content_length is not None and request.content_length > limit:
            return None
        chunks, size, spooled, complete = [], 0, None, False
        try:
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    break
                if spooled is not None:
                    await asyncio.to_thread(spooled.file.write, chunk)
                elif size > IN_MEMORY_BYTES and self.spool_dir and is_invocation(request):
                    spooled = await asyncio.to_thread(spool.Spooled.start, self.spool_dir, [*chunks, chunk])
                    chunks = []
                else:
                    chunks.append(chunk)
            complete = size <= limit
        finally:
            if spooled is not None:
                spooled.file.close()
                if not complete:
                    spooled.path.unlink(missing_ok=True)
        if not complete:
            return None
        return spooled or b"".join(chunks)

    def check_invocation(self, request: web.BaseRequest, body: bytes, headers: dict[str, str]) -> web.Response | None:
        """406 or 415 for what the model cannot answer; a body without a content type gets the one
        its bytes show (MMS would fail on it with a 500)."""
        accept = request.headers.get("Accept", "")
        if accept and not accepts(accept):
            return json_error(HTTPStatus.NOT_ACCEPTABLE, f"Accept: {accept} excludes {PRODUCES}, the only answer format")
        given = request.headers.get("Content-Type", "")
        if given.split(";")[0].strip().lower() in UNTYPED:
            mime = sniff(body) if body else None
            if mime is None:
                return json_error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                                  f"{'no Content-Type' if not given else 'Content-Type ' + given} and a body that is "
                                  "not a known image, JSON or .npy: set Content-Type to image/jpeg, image/png, "
                                  "application/x-image, application/json or application/x-npy")
            for key in [k for k in headers if k.lower() == "content-type"]:
                del headers[key]
            headers["Content-Type"] = mime
        return None

    def route(self, request: web.BaseRequest) -> str | None:
        """The MMS path for POST /invocations, or None when a multi-model call names no model."""
        if not self.multi_model:
            return f"/predictions/{MODEL_NAME}"
        target = request.headers.get(TARGET_MODEL)
        if not target:
            return None
        return f"/models/{target.removesuffix('.tar.gz').strip('/')}/invoke"

    async def forward(self, method: str, path: str, headers: dict[str, str], body: bytes,
                      answer_type: str | None = None) -> web.Response:
        """MMS's answer, headers and body together in one response; `answer_type` is the
        Content-Type of a model's answers (the worker sends them without one: mms_entry.py)."""
        try:
            async with self.session.request(method, self.upstream + path, headers=headers,
                                            data=body if method in ("POST", "PUT") else None,
                                            timeout=self.upstream_timeout if answer_type else UNBOUNDED) as resp:
                payload = await resp.read()
                if resp.status in ERROR_STATUSES and (reason := model_server_error(payload)):
                    if resp.status == HTTPStatus.INTERNAL_SERVER_ERROR:  # "Worker died." and the like
                        rid = request_id_of(headers)
                        log.error("request %s failed (500): model server's answer to %s %s: %s", rid, method, path,
                                  reason)
                        return internal_error(rid)
                    log.info("model server answered %d to %s %s: %s", resp.status, method, path, reason)
                    return json_error(HTTPStatus(resp.status), reason)
                out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
                if answer_type and "Content-Type" not in resp.headers:
                    out["Content-Type"] = answer_type
                    payload = payload.rstrip(b" ")  # the worker's padding (mms_entry.py)
                return web.Response(status=resp.status, reason=resp.reason, headers=out, body=payload)
        except asyncio.TimeoutError:
            return json_error(HTTPStatus.GATEWAY_TIMEOUT, f"the model did not answer within the response timeout "
                                                          f"of {self.upstream_timeout_s:g} s")
        except aiohttp.ServerDisconnectedError:
            return json_error(HTTPStatus.BAD_GATEWAY, "model server closed the connection (a worker may have died)")
        except aiohttp.ClientError as e:
            return json_error(HTTPStatus.SERVICE_UNAVAILABLE, f"model server not answering: {e}")

    async def health(self) -> tuple[int, str]:
        if not self.multi_model and not self.model_ready.is_set():
            return HTTPStatus.SERVICE_UNAVAILABLE, "model not loaded yet"
        try:
            async with self.session.get(self.upstream + "/ping", timeout=aiohttp.ClientTimeout(total=10)) as resp:
                status, state = resp.status, (await resp.json(content_type=None)).get("status", "")
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, AttributeError):
            return HTTPStatus.SERVICE_UNAVAILABLE, "model server not answering"
        if status == 200 and state in HEALTHY:
            return HTTPStatus.OK, "Healthy"
        return HTTPStatus.SERVICE_UNAVAILABLE, f"model server says {state or status}: workers not running"


def is_invocation(request: web.BaseRequest) -> bool:
    path = request.path.rstrip("/")
    return request.method == "POST" and (path == "/invocations" or (path.startswith("/models/")
                                                                    and path.endswith("/invoke")))


def accepts(accept: str) -> bool:
    """Whether an Accept header admits JSON (media ranges with q=0 excluded)."""
    for item in accept.split(","):
        media, *params = [p.strip() for p in item.split(";")]
        q = next((p.partition("=")[2] for p in params if p.lower().startswith("q=")), "1")
        try:
            weight = float(q)
        except ValueError:
            weight = 1.0
        if media.lower() in ACCEPTS_JSON and weight > 0:
            return True
    return False
