"""``WS /v1/stream``: the meeting-transcription tutorial's streaming API, over the shared
stream session (:mod:`api.stream_session`).

The client sends ``{"type": "start", "sample_rate": 16000, "language": "en", "diarize": true}``
(also ``channels``, ``interim_results``, default true, and ``summarize``, default false),
binary 16-bit little-endian PCM in chunks of any size (8 to 192 kHz, mono or stereo:
resampled), and ``{"type": "end"}``. API keys as for ``/v1/listen``: ``Authorization: Bearer``,
``?api_key=`` or ``?token=``.

The server answers ``{"type": "started", "id", "session_id", "max_duration_seconds"}``, then
``partial`` and ``final`` segments ``{"type", "seq", "start", "end", "text", "speaker",
"confidence", "segment_id", "words"}`` (``seq`` increases over the session; a later frame with
the same ``segment_id`` replaces the earlier one; ``confidence`` is the mean of the words'
and null while a partial has none), and at the end, when ``summarize`` is on, ``{"type":
"summary", "id", "summary"}`` once the session's transcript job has summarized it, then
``{"type": "completed", "id", "status", "streamed_seconds", "reason"}``. ``id`` is the
session's job (``GET /v1/transcripts/{id}``, ``.srt``, ``.vtt``). A stream is one
participant, so every segment's ``speaker`` is ``S1``, with or without ``diarize``.

Errors are ``{"type": "error", "code", "message"}`` with the codes and close codes of
``/v1/listen``.
"""

import asyncio
import time
from typing import Literal

from fastapi import APIRouter, WebSocket
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.listen import describe
from api.metrics import ApiMetrics
from api.services import Services
from api.stream_session import (
    Dialect,
    Outgoing,
    Refusal,
    StreamService,
    StreamSession,
    receive_start_text,
)
from config.settings import Settings
from pipeline.call import Admission
from pipeline.jobs import JobNotFoundError
from pipeline.runtime import LiveRuntime
from pipeline.sink import AnyFrame
from protocol import CaptionFrame, ErrorCode
from protocol.frames import Word
from protocol.jobs import JobState
from protocol.listen import CLOSE_UNSUPPORTED, SAMPLE_RATE, ListenError, ListenStart
from protocol.transcript import Summary

PATH = "/v1/stream"
SPEAKER = "S1"
SUMMARY_WAIT_S = 900.0  # the post-call pass of a long session on a slow machine


class TutorialStart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["start"]
    sample_rate: int = Field(default=SAMPLE_RATE, ge=8000, le=192_000)
    channels: int = Field(default=1, ge=1, le=2)
    language: str | None = Field(default=None, min_length=1, max_length=16)
    diarize: bool = False
    summarize: bool = False
    interim_results: bool = True


class TutorialStarted(BaseModel):
    type: Literal["started"] = "started"
    id: str | None
    session_id: str
    max_duration_seconds: float


class TutorialSegment(BaseModel):
    type: Literal["partial", "final"]
    seq: int
    start: float
    end: float
    text: str
    speaker: str
    confidence: float | None
    segment_id: str
    words: list[Word]


class TutorialSummary(BaseModel):
    type: Literal["summary"] = "summary"
    id: str
    summary: Summary


class TutorialCompleted(BaseModel):
    type: Literal["completed"] = "completed"
    id: str | None
    status: Literal["queued", "processing", "succeeded", "failed"] | None
    streamed_seconds: float
    reason: str


_STATUS: dict[JobState, Literal["queued", "processing", "succeeded", "failed"]] = {
    JobState.QUEUED: "queued",
    JobState.PROCESSING: "processing",
    JobState.COMPLETED: "succeeded",
    JobState.FAILED: "failed",
}


def segment(frame: CaptionFrame) -> TutorialSegment:
    confidence = (
        round(sum(w.confidence for w in frame.words) / len(frame.words), 3) if frame.words else None
    )
    return TutorialSegment(
        type=frame.type,
        seq=frame.seq,
        start=frame.start,
        end=frame.end,
        text=frame.text,
        speaker=SPEAKER,
        confidence=confidence,
        segment_id=frame.segment_id,
        words=frame.words,
    )


class TutorialDialect(Dialect):
    def __init__(self, services: Services) -> None:
        self.services = services
        self.summarize = False  # the start message says
        self.status: JobState | None = None

    def ready(self, session: StreamSession) -> list[str]:
        started = TutorialStarted(
            id=session.job_id,
            session_id=session.session_id,
            max_duration_seconds=session.max_duration_s,
        )
        return [started.model_dump_json()]

    def frame(self, frame: AnyFrame, session: StreamSession) -> list[Outgoing]:
        if isinstance(frame, CaptionFrame):
            return [Outgoing(segment(frame).model_dump_json(), droppable=frame.type == "partial")]
        if frame.type == "error":
            return [Outgoing(frame.model_dump_json(include={"type", "code", "message"}))]
        return []

    async def after(self, session: StreamSession, job_id: str | None) -> list[str]:
        if job_id is None:
            return []
        store = self.services.store
        deadline = time.monotonic() + SUMMARY_WAIT_S
        while True:
            try:
                record = await store.get(job_id)
            except JobNotFoundError:
                record = None
            if record is not None:
                self.status = record.status
                if not self.summarize or record.status is JobState.FAILED:
                    return []
                if record.status is JobState.COMPLETED:
                    transcript = await store.get_transcript(job_id)
                    summary = transcript.summary or Summary()
                    return [TutorialSummary(id=job_id, summary=summary).model_dump_json()]
            if not self.summarize or time.monotonic() > deadline or not session.connected:
                return []
            await asyncio.sleep(0.5)

    def completed(
        self, session: StreamSession, job_id: str | None, streamed_s: float, reason: str
    ) -> list[str]:
        status = _STATUS[self.status] if self.status is not None else None
        completed = TutorialCompleted(
            id=job_id, status=status, streamed_seconds=streamed_s, reason=reason
        )
        return [completed.model_dump_json()]

    def error(self, code: ErrorCode, message: str) -> str:
        return ListenError(code=code, message=message).model_dump_json()


def tutorial_stream_router(
    runtime: LiveRuntime,
    admission: Admission,
    settings: Settings,
    metrics: ApiMetrics | None = None,
) -> APIRouter:
    """``WS /v1/stream``."""
    router = APIRouter(tags=["compat: tutorial"])
    service = StreamService(runtime, admission, settings, metrics)

    @router.websocket(PATH)
    async def stream(websocket: WebSocket) -> None:
        await websocket.accept()
        dialect = TutorialDialect(websocket.app.state.services)
        if not service.authorized(websocket):
            await service.unauthorized(websocket, dialect)
            return

        async def read_start(ws: WebSocket, timeout_s: float) -> ListenStart:
            text = await receive_start_text(ws, timeout_s)
            try:
                start = TutorialStart.model_validate_json(text)
            except ValidationError as exc:
                raise Refusal(ErrorCode.INVALID_CONFIG, describe(exc), CLOSE_UNSUPPORTED) from None
            if start.summarize and not settings.postcall.summarize:
                message = "summarize: summaries are off on this server (postcall.summarize)"
                raise Refusal(ErrorCode.INVALID_CONFIG, message, CLOSE_UNSUPPORTED)
            dialect.summarize = start.summarize
            return ListenStart(
                type="start",
                sample_rate=start.sample_rate,
                channels=start.channels,
                language=start.language,
                interim_results=start.interim_results,
            )

        await service.serve(websocket, dialect, read_start)

    return router
