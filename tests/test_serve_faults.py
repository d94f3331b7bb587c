"""Faults under a real imgclf-serve (multi-model-server on 127.0.0.1): a model worker killed in
the middle of a request, and SIGTERM with requests in flight. (A model that cannot load:
tests/test_serve_server.py.)"""
import signal
import threading
import time

import psutil
import pytest
import requests
from PIL import Image
from serve_support import encode, jpeg, make_artifact, require_mms, serve

pytestmark = pytest.mark.mms
SAGEMAKER_GRACE_S = 30  # SIGKILL follows SIGTERM after this long
# a 36-megapixel PNG of 120 kB: a few hundred ms of decoding, so a fault can land while the worker holds it
SLOW_BODY = encode(Image.new("RGB", (6000, 6000), (10, 20, 30)), "PNG")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_mms()
    tmp = tmp_path_factory.mktemp("faults")
    with serve(tmp, ["--model-dir", str(make_artifact(tmp / "model")), "--workers", "1"],
               {"IMGCLF_PRECISION": "fp32"}) as s:
        s.wait_healthy()
        yield s


def model_workers(server) -> list[psutil.Process]:
    """The processes that run the handler: MMS's per-model backend forks one per worker."""
    procs = [p for p in psutil.Process(server.process.pid).children(recursive=True)
             if "model_service_worker" in " ".join(p.cmdline())]
    return [p for p in procs if p.ppid() in {q.pid for q in procs}]


def post_in_background(server, body, content_type, answers: list) -> threading.Thread:
    def call():
        start = time.monotonic()
        try:
            r = requests.post(server.url + "/invocations", data=body, headers={"Content-Type": content_type},
                              timeout=120)
            answers.append((r, time.monotonic() - start))
        except requests.RequestException as e:
            answers.append((e, time.monotonic() - start))

    thread = threading.Thread(target=call)
    thread.start()
    return thread


def wait_until_busy(worker: psutil.Process, cpu_s: float = 0.05, timeout: float = 30) -> None:
    """Until the worker has spent `cpu_s` more CPU time: it is working on the request."""
    start = sum(worker.cpu_times()[:2])
    deadline = time.monotonic() + timeout
    while sum(worker.cpu_times()[:2]) - start < cpu_s:
        assert time.monotonic() < deadline, "the worker never started on the request"
        time.sleep(0.01)


def test_a_worker_killed_mid_request_answers_5xx_json_and_ping_recovers(server):
    (worker,) = model_workers(server)
    answers = []
    thread = post_in_background(server, SLOW_BODY, "image/png", answers)
    wait_until_busy(worker)
    worker.kill()
    thread.join(60)
    (answer, seconds), = answers
    assert isinstance(answer, requests.Response), answer
    assert 500 <= answer.status_code < 600 and answer.json()["message"], answer.text
    assert seconds < 30
    deadline = time.monotonic() + 120
    while requests.get(server.url + "/ping", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "/ping did not recover"
        time.sleep(0.5)
    r = requests.post(server.url + "/invocations", data=jpeg(), headers={"Content-Type": "image/jpeg"}, timeout=120)
    assert r.status_code == 200 and r.json()["predictions"]
    assert [w.pid for w in model_workers(server)] != [worker.pid]  # a new worker, started by MMS


def test_sigterm_answers_the_requests_in_flight_and_stops_within_the_grace_period(server):
    (worker,) = model_workers(server)
    answers = []
    threads = [post_in_background(server, SLOW_BODY, "image/png", answers)]
    threads += [post_in_background(server, jpeg(), "image/jpeg", answers) for _ in range(4)]
    wait_until_busy(worker)
    start = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(60)
    assert server.process.wait(SAGEMAKER_GRACE_S) == 0
    assert time.monotonic() - start < SAGEMAKER_GRACE_S
    assert sorted(a.status_code for a, _ in answers) == [200] * 5, answers
    gone, alive = psutil.wait_procs([worker], timeout=5)
    assert alive == []
