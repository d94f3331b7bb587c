"""The serving profiles and their limits: what one request may take on each way SageMaker serves a
model. A leaf with no dependencies, shared by the container (environment.py), the launcher (which
sets `PROFILE_ENV` on the endpoints it creates and sizes their timeouts from it).
"""
from __future__ import annotations

from dataclasses import dataclass

PROFILE_ENV = "IMGCLF_SERVING_PROFILE"
MiB, GiB = 1024 * 1024, 1024 * 1024 * 1024


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
