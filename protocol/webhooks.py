"""Webhooks: event names, the signed event body, the delivery log and the payloads.

Every webhook POST carries one :class:`WebhookEvent` as JSON, signed in the
``X-Roomscribe-Signature`` header (:func:`sign`, checked with :func:`verify`); the same body
is published on NATS subject ``<prefix>.v1.jobevents.<job id>``. Pure.
"""

import hashlib
import hmac
import time
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

SIGNATURE_HEADER = "X-Roomscribe-Signature"


class WebhookEventType(StrEnum):
    TRANSCRIPT_DONE = "transcript.done"
    TRANSCRIPT_FAILED = "transcript.failed"
    TRANSCRIPT_REVISED = "transcript.revised"
    CALL_ENDED = "call.ended"
    WEBHOOK_TEST = "webhook.test"


class WebhookEvent(BaseModel):
    id: str
    type: WebhookEventType
    created_at: float
    data: dict[str, Any]


class DeliveryAttempt(BaseModel):
    at: float
    status_code: int | None = None
    error: str | None = None
    forbidden: bool = Field(default=False, description="the guard refused the URL")


class Delivery(BaseModel):
    key: str
    job_id: str
    event: WebhookEvent
    url: str | None
    status: Literal["pending", "delivered", "failed", "no_url"]
    attempts: list[DeliveryAttempt] = Field(default_factory=list)
    payload: dict[str, Any] | None = Field(
        default=None, description="posted instead of event: the event in an imitated API's shape"
    )


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header value: ``t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(
    secret: str, body: bytes, header: str, tolerance_s: float = 300.0, now: float | None = None
) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` and its time is within tolerance."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, timestamp), header)


class CallParticipant(BaseModel):
    participant: str
    name: str | None
    offset: float = Field(description="seconds from the call's start to their first sample")


class CallEndedData(BaseModel):
    """``data`` of ``call.ended``: the call and the id of its one post-call job."""

    call_id: str
    room: str
    started_at: float
    ended_at: float | None
    end_reason: str | None
    participants: list[CallParticipant]
    job_id: str


class JobEventData(BaseModel):
    """``data`` of ``transcript.done`` / ``transcript.failed`` / ``transcript.revised``: the
    public part of the job record (``protocol.jobs.JobRecord``), plus for ``revised`` the
    transcript it revises, the segment and the call."""

    model_config = {"extra": "allow"}

    id: str
    kind: str
    status: str
    error: dict[str, Any] | None = None
    source: dict[str, Any]
    results: list[str] = Field(default_factory=list)
    transcript_id: str | None = None
    segment_id: str | None = None
    call_id: str | None = None
