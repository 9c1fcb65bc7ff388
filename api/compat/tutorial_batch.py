"""The meeting-transcription tutorial's batch API on roomscribe's own paths.

``POST /v1/transcripts`` already takes the tutorial's body (``audio_url``, ``diarize``,
``language``, ``redact_pii``, ``summarize``) and answers ``202 {id, status: "queued"}``;
``.srt`` / ``.vtt`` are the normal exports. What this module adds:

* the tutorial's result fields on ``GET /v1/transcripts/{id}`` once completed: top-level
  ``segments`` (``start``, ``end``, ``text``, ``speaker``, ``confidence``) and, when
  summarized, ``intelligence`` (``summary``, ``topics``, ``actions``, ``decisions``);
* ``POST /v1/webhooks/test``: one signed ``webhook.test`` event to a URL, through the same
  delivery queue (guard, signature, retries) as job webhooks.

Status words: the tutorial's finished job says ``succeeded``; roomscribe keeps ``completed``
(every other route, webhook and adapter says it), so a tutorial client compares with
``completed``. ``queued`` and ``failed`` are the same; ``failed`` carries ``error`` as
``{code, message}`` rather than a bare string.
"""

import asyncio
import os
import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.bodies import JsonBody
from api.errors import ApiError, errors
from api.services import Services
from pipeline.url_fetch import DownloadError, check_url
from protocol.errors import ErrorCode
from protocol.openapi import json_body
from protocol.transcript import Transcript
from protocol.webhooks import DeliveryAttempt, WebhookEventType

# how long POST /v1/webhooks/test waits for the first answer before saying "pending"
TEST_WAIT_S = 5.0


class TutorialSegment(BaseModel):
    start: float
    end: float
    text: str
    speaker: str
    confidence: float | None = Field(description="mean word confidence; null without words")


class TutorialAction(BaseModel):
    text: str
    owner: str | None
    due: str | None
    start: float
    end: float


class TutorialCited(BaseModel):
    text: str
    start: float
    end: float


class Intelligence(BaseModel):
    summary: str
    topics: list[str]
    actions: list[TutorialAction]
    decisions: list[TutorialCited]


def tutorial_segments(transcript: Transcript) -> list[TutorialSegment]:
    found = []
    for segment in transcript.segments:
        scores = [w.confidence for w in segment.words]
        found.append(
            TutorialSegment(
                start=segment.start,
                end=segment.end,
                text=segment.text,
                speaker=transcript.speaker_name(segment.speaker),
                confidence=round(sum(scores) / len(scores), 3) if scores else None,
            )
        )
    return found


def intelligence(transcript: Transcript) -> Intelligence | None:
    summary = transcript.summary
    if summary is None:
        return None
    return Intelligence(
        summary=" ".join(item.text for item in summary.summary),
        topics=[item.text for item in summary.topics],
        actions=[
            TutorialAction(text=a.text, owner=a.owner, due=a.due, start=a.start, end=a.end)
            for a in summary.action_items
        ],
        decisions=[TutorialCited(text=d.text, start=d.start, end=d.end) for d in summary.decisions],
    )


class WebhookTestRequest(JsonBody):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        default=None, max_length=2048, description="default: postcall.webhook_url"
    )


class WebhookTestResult(BaseModel):
    id: str = Field(description="the test event's id")
    url: str
    status: Literal["pending", "delivered", "failed"]
    attempts: list[DeliveryAttempt]


router = APIRouter(tags=["webhooks"])


@router.post(
    "/v1/webhooks/test",
    response_model=WebhookTestResult,
    responses=errors(400, 422),
    openapi_extra={"requestBody": json_body(WebhookTestRequest, required=False)},
)
async def test_webhook(request: Request) -> WebhookTestResult:
    """Send one signed ``webhook.test`` event; answers how the first attempt went (``pending``
    while it is still being retried)."""
    services: Services = request.app.state.services
    raw = await request.body()
    try:
        body = WebhookTestRequest.model_validate_json(raw) if raw.strip() else WebhookTestRequest()
    except ValidationError as exc:
        malformed = any(e["type"] == "json_invalid" for e in exc.errors())
        message = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise ApiError(400 if malformed else 422, ErrorCode.INVALID_REQUEST, message) from exc
    url = body.url or services.settings.postcall.webhook_url
    if not url:
        raise ApiError(
            422, ErrorCode.INVALID_REQUEST, "give url (no postcall.webhook_url is configured)"
        )
    try:
        await check_url(url, services.settings.api.allow_private_urls)
    except DownloadError as exc:
        raise ApiError(400, exc.code, f"url: {exc.message}") from exc
    test_id = f"whtest_{int(time.time() * 1000):012x}{os.urandom(4).hex()}"
    data: dict[str, Any] = {"id": test_id, "message": "roomscribe webhook test"}
    notifier = services.notifier
    await notifier.notify(test_id, WebhookEventType.WEBHOOK_TEST, data, url)
    deadline = time.monotonic() + TEST_WAIT_S
    while True:
        (delivery,) = await notifier.deliveries(test_id)
        if delivery.attempts or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    return WebhookTestResult(
        id=delivery.event.id,
        url=url,
        status="pending" if delivery.status == "no_url" else delivery.status,
        attempts=delivery.attempts,
    )
