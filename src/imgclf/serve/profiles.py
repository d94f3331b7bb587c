"""The serving profiles and their limits: what one request may take on each way SageMaker serves a
model. A leaf with no dependencies, shared by the container (environment.py), the launcher (which
sets `PROFILE_ENV` on the endpoints it creates and sizes their timeouts from it) and training's
int8 export (the agreement it must reach).
"""
from __future__ import annotations

from dataclasses import dataclass

PROFILE_ENV = "IMGCLF_SERVING_PROFILE"
MiB, GiB = 1024 * 1024, 1024 * 1024 * 1024
# What `auto` demands of an int8 copy on the validation set, and what training's accuracy-aware
# quantization aims for: this share of float32's top-1 answers kept, at most this accuracy lost
INT8_MIN_AGREEMENT, INT8_MAX_ACCURACY_DROP = 0.99, 0.005


@dataclass(frozen=True)
class Limits:
    """What one request may take: its body, and the time from forwarding it to the answer."""

    max_payload_bytes: int
    response_timeout_s: int


PROFILES = {
    # SageMaker's own limits for each way of serving (InvokeEndpoint, serverless,
    # InvokeEndpointAsync, CreateTransformJob's MaxPayloadInMB and invocation timeout)
    "real-time": Limits(6 * MiB, 60),
    "serverless": Limits(4 * MiB, 60),
    "async": Limits(1 * GiB, 3600),
    "batch": Limits(6 * MiB, 3600),
}
