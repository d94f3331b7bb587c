"""The front port on its own, with no model server behind it: what it answers by itself."""
import threading

import pytest
import requests
from serve_support import free_port

from imgclf.serve.front import Front


@pytest.fixture
def front():
    def start(**kw):
        server = Front(("127.0.0.1", 0), free_port(), **{"multi_model": False, "max_payload_bytes": 1000, **kw})
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", server

    servers = []
    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def test_ping_is_503_until_the_model_is_loaded(front):
    url, server = front()
    r = requests.get(url + "/ping")
    assert r.status_code == 503 and r.json()["status"] == "Unhealthy" and "not loaded" in r.json()["message"]
    server.model_ready.set()  # registered, but no model server answering: still not healthy
    r = requests.get(url + "/ping")
    assert r.status_code == 503 and "not answering" in r.json()["message"]


def test_payload_over_the_limit_is_413_before_the_model_server(front):
    url, _ = front()
    r = requests.post(url + "/invocations", data=b"x" * 1001, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 413 and "1001 bytes" in r.json()["message"]
    r = requests.post(url + "/invocations", data=iter([b"x" * 600, b"x" * 600]), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 413  # chunked bodies are counted too
    # the connection stays usable: the next request gets its own answer
    with requests.Session() as s:
        assert s.post(url + "/invocations", data=b"x" * 2000).status_code == 413
        assert s.get(url + "/ping").status_code == 503


def test_multi_model_invocations_need_a_target_model(front):
    url, _ = front(multi_model=True)
    r = requests.post(url + "/invocations", data=b"x", headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 400 and "X-Amzn-SageMaker-Target-Model" in r.json()["message"]


def test_model_server_down_is_a_json_503(front):
    url, _ = front()
    r = requests.post(url + "/invocations", data=b"x", headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 503 and r.json()["error"] == "Service Unavailable"
