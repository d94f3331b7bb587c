"""A corpus of hostile requests against a real imgclf-serve: fuzzed JPEG/PNG bytes, decompression
and gzip bombs, huge and deep JSON, wrong .npy dtypes and headers, odd HTTP headers, and slow,
half-sent or idle connections. Every answer must be a 4xx with a JSON reason or a correct
prediction, and no model worker may die."""
from __future__ import annotations

import base64
import gzip
import io
import json
import random
import socket
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
import pytest
import requests
from PIL import Image
from serve_support import CLASSES, encode, jpeg, make_artifact, require_mms, serve

pytestmark = pytest.mark.mms
MAX_PAYLOAD = 1024 * 1024
SERVER_ENV = {"IMGCLF_PRECISION": "fp32", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "1", "IMGCLF_MAX_IMAGE_PIXELS": "4000000"}
FUZZ_PER_SEED = 40


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_mms()
    tmp = tmp_path_factory.mktemp("hostile")
    with serve(tmp, ["--model-dir", str(make_artifact(tmp / "model")), "--workers", "1"], SERVER_ENV) as s:
        s.wait_healthy()
        yield s


def npy(array, version=None) -> bytes:
    buf = io.BytesIO()
    if version is None:
        np.save(buf, array, allow_pickle=True)
    else:
        header = np.lib.format.header_data_from_array_1_0(array)
        np.lib.format.write_array_header_2_0(buf, header) if version == 2 else None
        buf.write(array.tobytes())
    return buf.getvalue()


def npy_claiming(shape, descr="|u1") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + b"\0" * 64


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header says width x height."""
    data = bytearray(jpeg(size=(16, 16)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png_with_chunk(kind: bytes, payload: bytes) -> bytes:
    png = encode(Image.new("RGB", (8, 8)), "PNG")
    chunk = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return png[:33] + chunk + png[33:]  # after IHDR


def mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        pos = rng.randrange(len(out))
        kind = rng.random()
        if kind < 0.6:
            out[pos] = rng.randrange(256)
        elif kind < 0.8:
            out[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        else:
            del out[pos:]
            if not out:
                out = bytearray(b"\xff")
    return bytes(out)


def corpus() -> list[tuple[str, bytes, dict]]:
    """(name, body, headers) of every hostile request sent over HTTP."""
    rng = random.Random(12)
    cases = []
    seeds = {"image/jpeg": jpeg(size=(64, 48)), "image/png": encode(Image.new("RGBA", (40, 30), (9, 99, 199, 50)), "PNG"),
             "application/x-image": encode(Image.new("RGB", (40, 30)), "GIF")}
    for mime, seed in seeds.items():
        for i in range(FUZZ_PER_SEED):
            cases.append((f"fuzzed {mime} {i}", mutate(seed, rng), {"Content-Type": mime}))
            cases.append((f"fuzzed {mime} {i} untyped", mutate(seed, rng), {}))
    one = base64.b64encode(jpeg()).decode()
    cases += [
        # bombs: tiny on the wire, huge once decoded
        ("png bomb", encode(Image.new("1", (5000, 5000)), "PNG"), {"Content-Type": "image/png"}),
        ("jpeg header 65000x65000", jpeg_claiming(65000, 65000), {"Content-Type": "image/jpeg"}),
        ("jpeg header 0x0", jpeg_claiming(0, 0), {"Content-Type": "image/jpeg"}),
        ("gif bomb", encode(Image.new("P", (4000, 4000)), "GIF"), {"Content-Type": "application/x-image"}),
        ("tiff bomb", encode(Image.new("1", (6000, 6000)), "TIFF", compression="group4"), {"Content-Type": "image/png"}),
        ("png zTXt bomb", png_with_chunk(b"zTXt", b"k\0\0" + zlib.compress(b"a" * 50_000_000, 9)), {"Content-Type": "image/png"}),
        ("png iCCP bomb", png_with_chunk(b"iCCP", b"p\0\0" + zlib.compress(b"\0" * 50_000_000, 9)), {"Content-Type": "image/png"}),
        ("gzip bomb", gzip.compress(b"\xff" * 50_000_000, 9), {"Content-Type": "image/jpeg", "Content-Encoding": "gzip"}),
        ("gzip of a jpeg", gzip.compress(jpeg()), {"Content-Type": "image/jpeg", "Content-Encoding": "gzip"}),
        ("json of 2 bombs", json.dumps([base64.b64encode(encode(Image.new("1", (1900, 1900)), "PNG")).decode()] * 2).encode(),
         {"Content-Type": "application/json"}),
        # JSON
        ("json over the limit", b'["' + b"A" * (MAX_PAYLOAD + 10) + b'"]', {"Content-Type": "application/json"}),
        ("json deep", b"[" * 200_000 + b"]" * 200_000, {"Content-Type": "application/json"}),
        ("json deep objects", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, {"Content-Type": "application/json"}),
        ("json 100k strings", json.dumps(["x"] * 100_000).encode(), {"Content-Type": "application/json"}),
        ("json many images", json.dumps({"instances": [one] * 200}).encode(), {"Content-Type": "application/json"}),
        ("json invalid utf-8", b'["\xff\xfe"]', {"Content-Type": "application/json"}),
        ("json lone surrogate", b'["\\ud800"]', {"Content-Type": "application/json"}),
        ("json huge number", b"[1e999999]", {"Content-Type": "application/json"}),
        ("json top_k float", json.dumps({"image": one, "top_k": 2.5}).encode(), {"Content-Type": "application/json"}),
        ("json top_k huge", json.dumps({"image": one, "top_k": 10**30}).encode(), {"Content-Type": "application/json"}),
        ("json null", b"null", {"Content-Type": "application/json"}),
        ("json b64 of text", json.dumps([base64.b64encode(b"hello").decode()]).encode(), {"Content-Type": "application/json"}),
        # .npy
        *[(f"npy {dt}", npy(np.zeros((8, 8, 3), dt)), {"Content-Type": "application/x-npy"})
          for dt in ("float32", "float64", "int8", "uint16", ">u2", "bool", "complex64", "U4", "int64")],
        ("npy object (pickle)", npy(np.array([{"a": 1}, None], dtype=object)), {"Content-Type": "application/x-npy"}),
        ("npy structured", npy(np.zeros((4, 4), [("r", "u1"), ("g", "u1"), ("b", "u1")])), {"Content-Type": "application/x-npy"}),
        ("npy fortran order", npy(np.asfortranarray(np.zeros((8, 8, 3), np.uint8))), {"Content-Type": "application/x-npy"}),
        ("npy version 2", npy(np.zeros((8, 8, 3), np.uint8), version=2), {"Content-Type": "application/x-npy"}),
        ("npy header claims 10^12 pixels", npy_claiming((10**6, 10**6, 3)), {"Content-Type": "application/x-npy"}),
        ("npy header claims 10^6 images", npy_claiming((10**6, 4, 4, 3)), {"Content-Type": "application/x-npy"}),
        ("npy header claims more than it has", npy_claiming((100, 100, 3)), {"Content-Type": "application/x-npy"}),
        ("npy zero-size", npy(np.zeros((0, 8, 3), np.uint8)), {"Content-Type": "application/x-npy"}),
        ("npy scalar", npy(np.uint8(7)), {"Content-Type": "application/x-npy"}),
        ("npz archive", b"PK\x03\x04" + b"\0" * 100, {"Content-Type": "application/x-npy"}),
        ("npy header garbage", b"\x93NUMPY\x01\x00\x10\x00{'descr': os.system}", {"Content-Type": "application/x-npy"}),
        # headers
        ("content-type with junk parameters", jpeg(), {"Content-Type": "image/jpeg; charset=;;=x"}),
        ("content-type upper case", jpeg(), {"Content-Type": "IMAGE/JPEG"}),
        ("content-type multipart without boundary", jpeg(), {"Content-Type": "multipart/form-data"}),
        ("content-type text", b"hello", {"Content-Type": "text/plain"}),
        ("content-type json, body jpeg", jpeg(), {"Content-Type": "application/json"}),
        ("content-type npy, body jpeg", jpeg(), {"Content-Type": "application/x-npy"}),
        ("content-type jpeg, body png", encode(Image.new("RGB", (20, 20)), "PNG"), {"Content-Type": "image/jpeg"}),
        ("accept csv", jpeg(), {"Content-Type": "image/jpeg", "Accept": "text/csv"}),
        ("accept garbage q", jpeg(), {"Content-Type": "image/jpeg", "Accept": "*/*;q=abc"}),
        ("custom attributes top_k text", jpeg(), {"Content-Type": "image/jpeg", "X-Amzn-SageMaker-Custom-Attributes": "top_k=abc"}),
        ("custom attributes top_k negative", jpeg(), {"Content-Type": "image/jpeg", "X-Amzn-SageMaker-Custom-Attributes": "top_k=-3"}),
        ("custom attributes long", jpeg(), {"Content-Type": "image/jpeg", "X-Amzn-SageMaker-Custom-Attributes": "a=b," * 1500}),
        ("header of 20 kB", jpeg(), {"Content-Type": "image/jpeg", "X-Junk": "j" * 20_000}),
        ("130 headers", jpeg(), {"Content-Type": "image/jpeg", **{f"X-H{i}": "v" for i in range(130)}}),
        ("unknown content-encoding", jpeg(), {"Content-Type": "image/jpeg", "Content-Encoding": "snappy"}),
        ("target model header on a single model", jpeg(), {"Content-Type": "image/jpeg", "X-Amzn-SageMaker-Target-Model": "../../etc"}),
    ]
    return cases


RAW = {  # requests whose framing a client library would not produce: sent on a socket
    "chunk size not hex": b"POST /invocations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunk size overflow": b"POST /invocations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc\r\n",
    "content-length text": b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n0123456789",
    "content-length negative": b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "content-length huge": b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
    "two content-lengths": b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "smuggling: length and chunked": b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                                     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /ping HTTP/1.1\r\n\r\n",
    "obsolete line folding": b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n folded\r\nContent-Length: 0\r\n\r\n",
    "bare LF": b"GET /ping HTTP/1.1\nHost: x\n\n",
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "TLS hello": bytes.fromhex("160301020001000200") + b"\x03\x03" + b"\x00" * 60,
    "method garbage": b"P\x00ST /invocations HTTP/1.1\r\n\r\n",
    "absolute URI to elsewhere": b"GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n",
    "path traversal": b"GET /../../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
}


def check_answer(name: str, r: requests.Response) -> None:
    if r.status_code == 200:
        predictions = r.json()["predictions"]
        assert predictions and all(p["label"] in CLASSES for ps in predictions for p in ps), (name, r.text[:300])
    else:
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:300])
        assert r.json()["message"] and "Traceback" not in r.text, (name, r.text[:300])


def raw_answer(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks):
                    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
                    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), None)
                    if length is not None and len(body) >= length:
                        break
        except socket.timeout:
            pass
    return b"".join(chunks)


def worker_pids(server) -> set[int]:
    return {p.pid for p in psutil.Process(server.process.pid).children(recursive=True)
            if "model_service_worker" in " ".join(p.cmdline())}


def test_hostile_corpus_gets_4xx_or_predictions_and_no_worker_dies(server, capsys):
    workers = worker_pids(server)
    cases = corpus()

    def send(case):
        name, body, headers = case
        return name, requests.post(server.url + "/invocations", data=body, headers=headers, timeout=120)

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(send, cases))
    statuses = {}
    for name, r in answers:
        check_answer(name, r)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
    raw = 0
    for name, data in RAW.items():
        answer = raw_answer(server.port, data)
        raw += 1
        status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else None
        assert status is not None, (name, answer[:200])
        head, _, body = answer.partition(b"\r\n\r\n")
        assert 400 <= status < 500 or (status == 200 and b"/ping" in data or status == 404), (name, answer[:300])
        if status >= 400 and status != 404:
            assert json.loads(body)["message"], (name, answer[:300])
    assert worker_pids(server) == workers, "a model worker died"
    assert "Worker disconnected" not in server.log_text()
    assert requests.post(server.url + "/invocations", data=jpeg(), headers={"Content-Type": "image/jpeg"}).status_code == 200
    with capsys.disabled():
        print(f"\nhostile inputs: {len(cases)} over HTTP {dict(sorted(statuses.items()))} + {raw} raw framings; "
              f"0 worker crashes")


def test_slow_half_sent_and_idle_connections_do_not_block_the_server(server):
    workers = worker_pids(server)
    stop = threading.Event()

    def slowloris():  # headers one byte at a time, never finished
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            for byte in b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nX-Slow: ":
                if stop.is_set():
                    return
                s.send(bytes([byte]))
                time.sleep(0.05)
            stop.wait(10)

    def half_body():  # a body shorter than its Content-Length, then silence, then gone
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
                      + jpeg()[:100])
            stop.wait(3)

    def slow_body():  # a chunked body trickling in
        def chunks():
            data = jpeg()
            for i in range(0, len(data), 64):
                time.sleep(0.02)
                yield data[i:i + 64]
        return requests.post(server.url + "/invocations", data=chunks(), headers={"Content-Type": "image/jpeg"}, timeout=60)

    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(200)]
    threads = [threading.Thread(target=f) for f in (slowloris, slowloris, half_body, half_body)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        for _ in range(5):  # served while all that hangs around
            start = time.monotonic()
            r = requests.post(server.url + "/invocations", data=jpeg(), headers={"Content-Type": "image/jpeg"}, timeout=30)
            assert r.status_code == 200 and time.monotonic() - start < 10
        assert slow_body().status_code == 200
    finally:
        stop.set()
        for s in idle:
            s.close()
        for t in threads:
            t.join(30)
    assert worker_pids(server) == workers
    assert requests.get(server.url + "/ping", timeout=10).status_code == 200
