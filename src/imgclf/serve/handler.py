"""The image classifier handler, in TorchServe's shape: `initialize` once per worker, then for every
batch that the model server hands over, `preprocess` -> `inference` -> `postprocess`.

A batch holds several requests (server-side batching) and each request one or more images; all
images go through the network as one tensor. A request the decoder refuses gets its own 4xx with a
JSON reason while the rest of the batch is answered.

The network runs through the `Runner` that `IMGCLF_PRECISION` picks (precision.py): OpenVINO's int8
or float32 copy stored in the artifact on CPUs, torch (channels-last, bfloat16 where it agrees)
otherwise. A worker usually has one thread (a worker per CPU: environment.py); a request that
arrives alone runs on a copy of the OpenVINO network compiled for more (`lone_threads`). Images
become pixels with Pillow and numpy (images.EvalTransform, the same pixels as torchvision's
evaluation transform), so a worker serving the OpenVINO copies never imports torch.
"""
from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..artifact.card import load_card
from ..artifact.images import PROBE_IMAGES, EvalTransform, probe_batch
from .decoder import decode
from .environment import IN_FLIGHT_HEADER, ServingEnvironment
from .errors import BadRequest, ServeError, internal_error_json, request_id_of
from .precision import choose_runner
from .runtime import RunnerFactory, resident_mb, worker_device
from .spool import SPOOLED_BODY, read_body

log = logging.getLogger(__name__)

CUSTOM_ATTRIBUTES = "x-amzn-sagemaker-custom-attributes"
JSON_TYPE = "application/json"
VERBOSE = "verbose"  # Accept: application/json;verbose asks for every class's probability (JumpStart's answer)


@dataclass
class Batch:
    """The images of every request in one array, and where each request's answers are."""

    pixels: np.ndarray | None = None
    counts: list[int] = field(default_factory=list)  # images per request; 0 for a refused one
    top_k: list[int] = field(default_factory=list)
    verbose: list[bool] = field(default_factory=list)  # per request: answer in JumpStart's verbose shape
    errors: dict[int, ServeError] = field(default_factory=dict)
    alone: bool = False  # one request, and the only one in flight

    def add(self, results: list) -> list[np.ndarray]:
        """Record each request's result, (one array per image, top_k) or the ServeError refusing
        it; returns the images' arrays, in order."""
        arrays = []
        for i, result in enumerate(results):
            if isinstance(result, ServeError):
                self.errors[i] = result
                self.counts.append(0)
                self.top_k.append(0)
            else:
                images, top_k = result
                arrays += images
                self.counts.append(len(images))
                self.top_k.append(top_k)
        return arrays


class ImageClassifierHandler:
    def __init__(self, env: ServingEnvironment | None = None):
        self.env = env
        self.runner = None
        self.lone = None
        self.initialized = False

    def initialize(self, context) -> None:
        env = self.env = self.env or ServingEnvironment.from_env()
        Image.MAX_IMAGE_PIXELS = env.max_image_pixels
        self.threads = env.torch_threads
        self.pool = ThreadPoolExecutor(env.torch_threads, thread_name_prefix="preprocess")
        self.device = worker_device(context.system_properties.get("gpu_id"))
        model_dir = Path(context.system_properties["model_dir"])
        card = load_card(model_dir)
        self.classes = card.classes
        self.transform = EvalTransform(card.eval)
        probe = probe_batch(PROBE_IMAGES, self.transform)
        memory_before = resident_mb()
        factory = RunnerFactory(model_dir, card, self.device, env.torch_threads)
        self.runner = choose_runner(env.precision, factory, probe, env.int8_min_agreement, env.int8_max_accuracy_drop)
        # a request that arrives alone runs on more threads than the worker's share of the CPUs:
        # no other request waits for them (the front counts what is in flight)
        if env.lone_threads > env.torch_threads and hasattr(self.runner, "with_threads"):
            self.lone = self.runner.with_threads(env.lone_threads)
            self.lone(probe[:1])
        self.runner(probe[:1]), self.runner(probe)  # warm-up: the first request pays no one-off cost
        self.initialized = True
        # the model's own memory (weights, compiled graph, buffers): what each model of a
        # multi-model endpoint costs on top of the worker
        log.info("model %s (%s, %d classes) served by %s, %d threads, model memory %.0f MB", model_dir, card.arch,
                 len(self.classes), self.runner.name, env.torch_threads, resident_mb() - memory_before)

    def preprocess(self, data: list[dict], context) -> Batch:
        """Decode and transform every request; requests run side by side on the worker's threads
        (PIL and numpy release the GIL), so decoding keeps pace with a multi-threaded forward."""
        jobs = requests_of(data, context)
        side_by_side = len(jobs) > 1 and self.threads > 1
        results = list(self.pool.map(self.preprocess_one, jobs)) if side_by_side else [self.preprocess_one(j) for j in jobs]
        batch = Batch(verbose=[wants_verbose(headers.get("accept")) for _, headers in jobs],
                      alone=len(jobs) == 1 and jobs[0][1].get(IN_FLIGHT_HEADER.lower()) == "1")
        if pixels := batch.add(results):
            batch.pixels = np.stack(pixels)
        return batch

    def preprocess_one(self, job: tuple[bytes, dict]) -> tuple[list[np.ndarray], int] | ServeError:
        body, headers = job
        try:
            if SPOOLED_BODY.lower() in headers:  # a large body, passed as a file (spool.py)
                body = read_body(headers[SPOOLED_BODY.lower()])
            decoded = decode(body, headers.get("content-type"), self.transform.decode_min_side)
            top_k = decoded.top_k or top_k_attribute(headers.get(CUSTOM_ATTRIBUTES)) or self.env.top_k
            return [self.transform(img) for img in decoded.images], min(top_k, len(self.classes))
        except ServeError as e:
            return e

    def inference(self, pixels: np.ndarray, alone: bool = False) -> np.ndarray:
        return (self.lone if alone and self.lone is not None else self.runner)(pixels)

    def postprocess(self, probabilities: np.ndarray | None, batch: Batch) -> list[str]:
        answers, start = [], 0
        for i, (count, k) in enumerate(zip(batch.counts, batch.top_k)):
            if i in batch.errors:
                answers.append(batch.errors[i].to_json())
                continue
            probs = probabilities[start:start + count]
            start += count
            if batch.verbose[i]:
                answers.append(json.dumps(verbose_answer(probs, self.classes)))
                continue
            top = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # ties: the lower class index first
            answers.append(json.dumps({"predictions": [
                [{"label": self.classes[c], "probability": round(float(p[c]), 6)} for c in cs]
                for p, cs in zip(probs, top.tolist())
            ]}))
        return answers

    def handle(self, data: list[dict], context) -> list[str]:
        """One batch from the model server: a JSON answer and status per request."""
        start = time.perf_counter()
        batch = self.preprocess(data, context)
        decoded = time.perf_counter()
        probabilities = self.inference(batch.pixels, batch.alone) if batch.pixels is not None else None
        forwarded = time.perf_counter()
        answers = self.postprocess(probabilities, batch)
        done = time.perf_counter()
        # the worker's part of a request's time (bench/bench_limit.py reads it)
        log.info("batch of %d requests, %d images, %.1f ms (decode %.1f, forward %.1f, answer %.1f)", len(data),
                 sum(batch.counts), 1000 * (done - start), 1000 * (decoded - start), 1000 * (forwarded - decoded),
                 1000 * (done - forwarded))
        for i in range(len(data)):
            context.set_response_content_type(i, JSON_TYPE)
            if i in batch.errors:
                error = batch.errors[i]
                context.set_response_status(error.status_code, error.phrase, i)
                if error.status_code == 500:  # ours, not the request's: the cause goes to the log only
                    rid = request_id_of(context.get_all_request_header(i) or {}, context.get_request_id(i))
                    log.error("request %s failed (%d)", rid, error.status_code, exc_info=error)
                    answers[i] = internal_error_json(rid)
                else:
                    log.info("request %d refused (%d): %s", i, error.status_code, error.message)
        return answers


def requests_of(data: list[dict], context) -> list[tuple[bytes, dict]]:
    """Each request's body and headers (names in lower case)."""
    return [(request_body(request), {k.lower(): v for k, v in (context.get_all_request_header(i) or {}).items()})
            for i, request in enumerate(data)]


def request_body(request: dict) -> bytes:
    """The raw body: MMS puts it under "body" (or under the form field's name for multipart)."""
    if request.get("body") is not None:
        return request["body"]
    return next((v for v in request.values() if isinstance(v, (bytes, bytearray))), b"")


def wants_verbose(accept: str | None) -> bool:
    """Whether an Accept header asks for `application/json;verbose`."""
    for item in (accept or "").split(","):
        media, *params = [p.strip().lower() for p in item.split(";")]
        if media == JSON_TYPE and VERBOSE in params:
            return True
    return False


def verbose_answer(probabilities: np.ndarray, classes) -> dict | list[dict]:
    """JumpStart's verbose answer per image, every class in the model's order: {"labels",
    "probabilities", "predicted_label"}; the object itself for one image, a list for several."""
    answers = [{"labels": list(classes), "probabilities": [round(float(p), 6) for p in row],
                "predicted_label": classes[int(np.argmax(row))]} for row in probabilities]
    return answers[0] if len(answers) == 1 else answers


def top_k_attribute(attributes: str | None) -> int | None:
    """`top_k=3` from X-Amzn-SageMaker-Custom-Attributes (comma-separated key=value pairs)."""
    for pair in (attributes or "").split(","):
        key, _, value = pair.partition("=")
        if key.strip() == "top_k":
            try:
                k = int(value)
            except ValueError:
                k = 0
            if k < 1:
                raise BadRequest(f"top_k in X-Amzn-SageMaker-Custom-Attributes must be a positive integer, got {value!r}")
            return k
    return None

