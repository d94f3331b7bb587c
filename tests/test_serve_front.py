"""The front port with a small echo server standing in for multi-model-server: what the front
answers by itself, and what it passes on (tests/test_serve_server.py runs it with the real MMS)."""
import asyncio
import io
import json
import logging
import socket
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from aiohttp import web
from serve_support import free_port, jpeg

from imgclf.serve.environment import IN_MEMORY_BYTES
from imgclf.serve.errors import INTERNAL_ERROR_MESSAGE
from imgclf.serve.front import Front, accepts


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def run(loop, coro, timeout=30):
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)


def upstream(loop, handler):
    """Serve `handler` on a loopback port for a fixture: yields the port, then stops."""
    async def start():
        runner = web.ServerRunner(web.Server(handler))
        await runner.setup()
        sock = socket.create_server(("127.0.0.1", 0))
        await web.SockSite(runner, sock).start()
        return runner, sock.getsockname()[1]

    runner, port = run(loop, start())
    yield port
    run(loop, runner.cleanup())


@pytest.fixture
def echo(loop):
    """An upstream that answers every request with what it received, as JSON; `/slow` after 1 s,
    `/drop` by closing the connection."""
    async def handle(request):
        if request.path == "/drop":
            request.transport.close()
            await asyncio.sleep(1)
        if request.path in ("/slow", "/models/slow/invoke"):
            await asyncio.sleep(1)
        body = await request.read()
        return web.json_response({"method": request.method, "path": request.path_qs, "body": body.decode("latin-1"),
                                  "headers": dict(request.headers)}, headers={"X-Upstream": "yes"})

    yield from upstream(loop, handle)


@pytest.fixture
def front(loop):
    def start(upstream_port=None, **kw):
        f = Front(upstream_port or free_port(), **{"multi_model": False, "max_payload_bytes": 1000, **kw})
        port = run(loop, f.start("127.0.0.1", 0))
        fronts.append(f)
        return f"http://127.0.0.1:{port}", f

    fronts = []
    yield start
    for f in fronts:
        run(loop, f.stop())


def test_ping_is_503_until_the_model_is_loaded(front):
    url, server = front()
    r = requests.get(url + "/ping")
    assert r.status_code == 503 and r.json()["status"] == "Unhealthy" and "not loaded" in r.json()["message"]
    server.model_ready.set()  # registered, but no model server answering: still not healthy
    r = requests.get(url + "/ping")
    assert r.status_code == 503 and "not answering" in r.json()["message"]


@pytest.fixture
def healthy(loop):
    """An upstream whose /ping says Healthy, as multi-model-server's does with its workers up."""
    async def ping(request):
        return web.json_response({"status": "Healthy"})

    yield from upstream(loop, ping)


def test_head_ping_answers_as_get_ping_without_a_body(front, healthy):
    url, server = front(healthy)
    for ready, status in ((False, 503), (True, 200)):
        if ready:
            server.model_ready.set()
        get, head = requests.get(url + "/ping"), requests.head(url + "/ping")
        assert get.status_code == head.status_code == status
        assert get.json()["status"] == ("Healthy" if ready else "Unhealthy")
        assert head.content == b"" and head.headers["Content-Type"] == get.headers["Content-Type"]
        assert head.headers["Content-Length"] == get.headers["Content-Length"]
    assert requests.head(url + "/pong").status_code == 404


def test_payload_over_the_limit_is_413_before_the_model_server(front, echo):
    url, _ = front(echo)
    r = requests.post(url + "/invocations", data=b"x" * 1001, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 413 and "1001 bytes" in r.json()["message"]
    r = requests.post(url + "/invocations", data=iter([b"x" * 600, b"x" * 600]), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 413  # chunked bodies are counted too
    # the connection stays usable: the next request gets its own answer
    with requests.Session() as s:
        assert s.post(url + "/invocations", data=b"x" * 2000).status_code == 413
        assert s.post(url + "/invocations", data=jpeg(), headers={"Content-Type": "image/jpeg"}).status_code == 200


def test_multi_model_invocations_need_a_target_model(front):
    url, _ = front(multi_model=True)
    r = requests.post(url + "/invocations", data=b"x", headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 400 and "X-Amzn-SageMaker-Target-Model" in r.json()["message"]


def test_model_server_down_is_a_json_503(front):
    url, _ = front()
    r = requests.post(url + "/invocations", data=b"x", headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 503 and r.json()["error"] == "Service Unavailable"


def test_routes_and_passes_headers_and_body(front, echo):
    url, _ = front(echo)
    r = requests.post(url + "/invocations", data=b"\xff\xd8\xffdata", headers={"Content-Type": "image/jpeg",
                                                                                 "X-Amzn-SageMaker-Custom-Attributes": "top_k=1"})
    seen = r.json()
    assert r.status_code == 200 and r.headers["X-Upstream"] == "yes"
    assert seen["path"] == "/predictions/model" and seen["body"] == "\xff\xd8\xffdata"
    assert seen["headers"]["X-Amzn-SageMaker-Custom-Attributes"] == "top_k=1"
    r = requests.get(url + "/models")  # a single-model endpoint has no management API
    assert r.status_code == 404 and "POST /invocations" in r.json()["message"]


def test_multi_model_routing_and_registration(front, echo, tmp_path):
    models = tmp_path / "models"
    (models / "a" / "model").mkdir(parents=True)
    url, _ = front(echo, multi_model=True, register_defaults={"batch_size": 8, "max_batch_delay": 5},
                   models_dir=models, stage_dir=tmp_path / "stage", max_payload_bytes=100_000)
    r = requests.post(url + "/invocations", data=jpeg(), headers={"Content-Type": "image/jpeg",
                                                                 "X-Amzn-SageMaker-Target-Model": "dogs.tar.gz"})
    assert r.json()["path"] == "/models/dogs/invoke"
    assert requests.get(url + "/models?limit=2").json()["path"] == "/models?limit=2"  # management API unchanged
    model = str(models / "a" / "model")
    body = json.loads(requests.post(url + "/models", json={"model_name": "a", "url": model, "batch_size": 2}).json()["body"])
    assert body == {"model_name": "a", "url": model, "batch_size": 2, "max_batch_delay": 5}
    path = requests.post(url + f"/models?model_name=a&url={model}").json()["path"]
    assert "batch_size=8" in path and "max_batch_delay=5" in path and "model_name=a" in path
    for bad in (b"{not json", b"[" * 50_000, b"[1, 2]"):
        r = requests.post(url + "/models", data=bad)
        assert r.status_code == 400 and "POST /models" in r.json()["message"]
    for elsewhere in ("https://example.com/evil.mar", "/etc", str(models / ".." / "x"), "relative/model"):
        r = requests.post(url + "/models", json={"model_name": "a", "url": elsewhere})
        assert r.status_code == 403 and "under" in r.json()["message"], elsewhere
    r = requests.post(url + "/models", json={"model_name": "../../x", "url": model})
    assert r.status_code == 400 and "model_name" in r.json()["message"]


def test_multi_model_archives_are_extracted_safely(front, echo, tmp_path):
    models = tmp_path / "models"
    (models / "b").mkdir(parents=True)
    url, _ = front(echo, multi_model=True, models_dir=models, stage_dir=tmp_path / "stage")
    with tarfile.open(models / "b" / "model.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("model.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    sent = json.loads(requests.post(url + "/models", json={"model_name": "b", "url": str(models / "b")}).json()["body"])
    staged = Path(sent["url"])
    assert staged.parent == tmp_path / "stage" and (staged / "model.json").read_text() == "{}"
    with tarfile.open(models / "b" / "model.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    r = requests.post(url + "/models", json={"model_name": "b", "url": str(models / "b" / "model.tar.gz")})
    assert r.status_code == 400 and "link" in r.json()["message"]


def test_a_body_without_content_type_is_sniffed_or_refused_with_415(front, echo):
    url, _ = front(echo)
    for content_type in (None, "application/octet-stream", "application/x-www-form-urlencoded"):
        headers = {"Content-Type": content_type} if content_type else {}
        prepared = requests.Request("POST", url + "/invocations", data=jpeg(), headers=headers).prepare()
        if content_type is None:
            prepared.headers.pop("Content-Type", None)
        r = requests.Session().send(prepared)
        assert r.status_code == 200 and r.json()["headers"]["Content-Type"] == "image/jpeg", r.text
        prepared.body = b"just some words"
        prepared.headers["Content-Length"] = str(len(prepared.body))
        r = requests.Session().send(prepared)
        assert r.status_code == 415 and "Content-Type" in r.json()["message"]


@pytest.mark.parametrize("accept, ok", [
    ("application/json", True), ("*/*", True), ("text/csv, application/*;q=0.5", True), ("", True),
    ("text/csv", False), ("application/json;q=0", False), ("image/png, text/html", False),
])
def test_accept_that_excludes_json_is_406(front, echo, accept, ok):
    url, _ = front(echo)
    r = requests.post(url + "/invocations", data=jpeg(), headers={"Content-Type": "image/jpeg", "Accept": accept})
    assert (r.status_code == 200) == ok and (ok or (r.status_code == 406 and "application/json" in r.json()["message"]))
    assert accepts(accept) == ok or accept == ""


MALFORMED = {
    "chunk size not hex": b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "content-length not a number": b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n0123456789",
    "negative content-length": b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\nabcde",
    "two content-lengths": b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
    "content-length and chunked": b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "header line too long": b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
    "not HTTP": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 a TLS hello\r\n\r\n",
    "bad request line": b"GET\r\n\r\n",
}


def raw_exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)  # no half-close: aiohttp drops a connection whose client has stopped sending
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_framing_gets_a_json_400(front, echo, name):
    url, _ = front(echo)
    port = int(url.rsplit(":", 1)[1])
    answer = raw_exchange(port, MALFORMED[name])
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    assert 400 <= status < 500, answer[:300]
    assert b"application/json" in head and json.loads(body)["error"], answer[:300]
    assert requests.get(url + "/ping").status_code == 503  # the front is still up


def test_model_server_closing_the_connection_is_a_json_502(front, echo):
    url, _ = front(echo, multi_model=True)  # a path the front passes on as it is
    r = requests.post(url + "/drop", data=b"x", timeout=30)
    assert r.status_code == 502 and "closed the connection" in r.json()["message"]


def test_stop_lets_the_request_in_flight_finish(front, echo, loop):
    url, f = front(echo, multi_model=True)
    answers = []
    client = threading.Thread(target=lambda: answers.append(requests.post(url + "/slow", data=b"x", timeout=30)))
    client.start()
    while not f.runner.server.connections:
        pass
    run(loop, asyncio.sleep(0.2))
    run(loop, f.stop())
    client.join(30)
    assert answers and answers[0].status_code == 200
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/ping", timeout=5)


def test_the_server_process_does_not_load_torch():
    """The front and the server that starts MMS stay small: torch lives in the model workers."""
    import subprocess
    import sys

    code = "import sys, imgclf.serve.server; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


@pytest.fixture
def worker_died(loop):
    """An upstream that answers as MMS does when a worker dies mid-request."""
    async def handle(request):
        return web.json_response({"code": 500, "type": "InternalServerException", "message": "Worker died."},
                                 status=500)

    yield from upstream(loop, handle)


def test_the_request_id_goes_on_to_the_model_server_given_or_generated(front, echo):
    url, _ = front(echo)
    given = requests.post(url + "/invocations", data=b"\xff\xd8\xff", headers={"Content-Type": "image/jpeg",
                                                                                "x-amzn-requestid": "c0ffee-1"})
    assert given.json()["headers"]["X-Amzn-RequestId"] == "c0ffee-1"
    generated = requests.post(url + "/invocations", data=b"\xff\xd8\xff", headers={"Content-Type": "image/jpeg"})
    assert len(generated.json()["headers"]["X-Amzn-RequestId"]) == 32


def test_the_model_server_hears_how_many_invocations_are_in_flight(front, echo):
    """X-Imgclf-In-Flight counts the invocations the front has passed on, this one included (the
    worker gives a lone one more threads); a client's own value is replaced."""
    url, _ = front(echo, multi_model=True)

    def invoke(model="fast", **headers):
        return requests.post(url + "/invocations", data=b"\xff\xd8\xff", timeout=30, headers={
            "Content-Type": "image/jpeg", "X-Amzn-SageMaker-Target-Model": model, **headers}).json()["headers"]

    with ThreadPoolExecutor(3) as pool:
        together = [int(h["X-Imgclf-In-Flight"]) for h in pool.map(lambda _: invoke("slow"), range(3))]
    assert sorted(together)[-1] == 3  # each waits a second upstream: the last one in finds all three
    assert invoke(**{"x-imgclf-in-flight": "7"})["X-Imgclf-In-Flight"] == "1"
    assert "X-Imgclf-In-Flight" not in requests.get(url + "/models", timeout=10).json()["headers"]


def test_a_500_from_the_model_server_is_a_fixed_message_and_the_request_id(front, worker_died, caplog):
    url, _ = front(worker_died)
    with caplog.at_level(logging.ERROR, "imgclf.serve"):
        r = requests.post(url + "/invocations", data=b"\xff\xd8\xff", headers={"Content-Type": "image/jpeg",
                                                                               "X-Amzn-RequestId": "c0ffee-2"})
    assert r.status_code == 500 and r.headers["Content-Type"].startswith("application/json")
    assert r.json()["request_id"] == "c0ffee-2" and "Worker died" not in r.text
    assert "c0ffee-2" in caplog.text and "Worker died." in caplog.text


def test_a_failure_in_the_front_is_a_500_with_the_id_and_the_traceback_in_the_log(front, echo, tmp_path, caplog):
    (tmp_path / "file").write_text("")  # the spool folder cannot be created under a file
    url, _ = front(echo, max_payload_bytes=IN_MEMORY_BYTES * 2, spool_dir=tmp_path / "file" / "spool")
    with caplog.at_level(logging.ERROR):
        r = requests.post(url + "/invocations", data=b"\xff\xd8\xff" + bytes(IN_MEMORY_BYTES),
                          headers={"Content-Type": "image/jpeg", "X-Amzn-RequestId": "c0ffee-3"})
    assert r.status_code == 500 and r.json()["request_id"] == "c0ffee-3"
    assert r.json()["message"] == INTERNAL_ERROR_MESSAGE and str(tmp_path) not in r.text
    assert "c0ffee-3" in caplog.text and "Traceback" in caplog.text and str(tmp_path / "file") in caplog.text
