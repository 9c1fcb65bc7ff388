"""``WS /api/v1/transcription/stream``: the live-transcription WebSocket protocol of a hosted
transcription API, over the shared stream session (:mod:`api.stream_session`).

The client authenticates with ``?api_key=<API key>`` or ``?token=<token>`` (a token from
``POST /v1/listen/token``, or an ``Authorization: Bearer`` header), then sends

1. ``{"type": "start", "language": "en", "diarize": false, "sample_rate": 16000,
   "channels": 1}``: the audio must be 16 kHz mono, as the protocol documents (anything else is
   ``INVALID_CONFIG``; roomscribe's own ``/v1/listen`` resamples);
2. binary frames of 16-bit little-endian PCM;
3. ``{"type": "end"}``.

The server answers ``ready`` (``job_id``, ``session_id``, ``max_duration_seconds``), then
``partial`` (``text``) and ``final`` (``text``, ``words[]``, ``speech_final``) frames, a
``usage`` frame after each final (``streamed_seconds``, ``credits_used``: always 0, nothing is
billed here), and ``completed`` (``job_id``, ``credits_used``, ``streamed_seconds``,
``transcript_path``) before closing. The session is saved as a normal job:
``transcript_path`` is ``/v1/transcripts/{job_id}`` (and its ``.srt`` / ``.vtt`` exports).

Errors are ``{"type": "error", "code", "message"}``: ``INVALID_CONFIG`` (malformed start, not
16 kHz mono, a language no live model knows, a message out of protocol), ``MAX_DURATION_REACHED``
(then the finals and ``completed``: the session is finalized and saved), ``UPSTREAM_ERROR``
(recognition failed or fell behind, or the server failed), ``UNAUTHORIZED``, ``CAPACITY``.
Close codes are those of ``/v1/listen``. ``diarize`` is accepted; a stream is one participant,
so its segments have one speaker.
"""

from typing import Literal

from fastapi import APIRouter, WebSocket
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.listen import describe
from api.metrics import ApiMetrics
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
from pipeline.runtime import LiveRuntime
from pipeline.sink import AnyFrame
from protocol import CaptionFrame, ErrorCode
from protocol.frames import Word
from protocol.listen import CLOSE_UNSUPPORTED, ListenStart

PATH = "/api/v1/transcription/stream"

UPSTREAM_ERROR = "UPSTREAM_ERROR"
# roomscribe's codes in the protocol's words: its table has no PROTOCOL or INVALID_REQUEST
_CODES = {
    ErrorCode.PROTOCOL: ErrorCode.INVALID_CONFIG,
    ErrorCode.INVALID_REQUEST: ErrorCode.INVALID_CONFIG,
    ErrorCode.MODEL_NOT_FOUND: ErrorCode.INVALID_CONFIG,
    ErrorCode.INTERNAL: UPSTREAM_ERROR,
    ErrorCode.ENGINE_FAILED: UPSTREAM_ERROR,
    ErrorCode.STREAM_OVERLOADED: UPSTREAM_ERROR,
}


class LiveStart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["start"]
    language: str | None = Field(default=None, min_length=1, max_length=16)
    diarize: bool = False
    sample_rate: Literal[16000] = 16000
    channels: Literal[1] = 1


class LiveReady(BaseModel):
    type: Literal["ready"] = "ready"
    job_id: str | None
    session_id: str
    max_duration_seconds: float


class LivePartial(BaseModel):
    type: Literal["partial"] = "partial"
    text: str
    start: float
    end: float
    segment_id: str


class LiveFinal(BaseModel):
    type: Literal["final"] = "final"
    text: str
    words: list[Word]
    speech_final: bool
    start: float
    end: float
    segment_id: str
    language: str | None


class LiveUsage(BaseModel):
    type: Literal["usage"] = "usage"
    credits_used: float = 0
    streamed_seconds: float


class LiveCompleted(BaseModel):
    type: Literal["completed"] = "completed"
    job_id: str | None
    credits_used: float = 0
    streamed_seconds: float
    transcript_path: str | None
    reason: str


class LiveError(BaseModel):
    type: Literal["error"] = "error"
    code: str
    message: str


def error_code(code: str) -> str:
    return _CODES.get(code, code)  # type: ignore[call-overload]


class LiveDialect(Dialect):
    def ready(self, session: StreamSession) -> list[str]:
        ready = LiveReady(
            job_id=session.job_id,
            session_id=session.session_id,
            max_duration_seconds=session.max_duration_s,
        )
        return [ready.model_dump_json()]

    def frame(self, frame: AnyFrame, session: StreamSession) -> list[Outgoing]:
        if isinstance(frame, CaptionFrame):
            if frame.type == "partial":
                partial = LivePartial(
                    text=frame.text, start=frame.start, end=frame.end, segment_id=frame.segment_id
                )
                return [Outgoing(partial.model_dump_json(), droppable=True)]
            final = LiveFinal(
                text=frame.text,
                words=frame.words,
                speech_final=True,
                start=frame.start,
                end=frame.end,
                segment_id=frame.segment_id,
                language=frame.language,
            )
            usage = LiveUsage(streamed_seconds=round(session.audio_seconds, 3))
            return [Outgoing(final.model_dump_json()), Outgoing(usage.model_dump_json())]
        if frame.type == "error":
            return [Outgoing(self.error(frame.code, frame.message))]  # type: ignore[arg-type]
        return []

    def completed(
        self, session: StreamSession, job_id: str | None, streamed_s: float, reason: str
    ) -> list[str]:
        completed = LiveCompleted(
            job_id=job_id,
            streamed_seconds=streamed_s,
            transcript_path=f"/v1/transcripts/{job_id}" if job_id else None,
            reason=reason,
        )
        return [completed.model_dump_json()]

    def error(self, code: ErrorCode, message: str) -> str:
        return LiveError(code=error_code(code), message=message).model_dump_json()


async def read_live_start(websocket: WebSocket, timeout_s: float) -> ListenStart:
    text = await receive_start_text(websocket, timeout_s)
    try:
        start = LiveStart.model_validate_json(text)
    except ValidationError as exc:
        raise Refusal(
            ErrorCode.INVALID_CONFIG,
            f"{describe(exc)} (the audio must be 16-bit PCM, 16000 Hz, mono)",
            CLOSE_UNSUPPORTED,
        ) from None
    return ListenStart(type="start", language=start.language, interim_results=True)


def live_protocol_router(
    runtime: LiveRuntime,
    admission: Admission,
    settings: Settings,
    metrics: ApiMetrics | None = None,
) -> APIRouter:
    """``WS /api/v1/transcription/stream``."""
    router = APIRouter(tags=["compat: live protocol"])
    service = StreamService(runtime, admission, settings, metrics)
    dialect = LiveDialect()

    @router.websocket(PATH)
    async def transcription_stream(websocket: WebSocket) -> None:
        await websocket.accept()
        if not service.authorized(websocket):
            await service.unauthorized(websocket, dialect)
            return
        await service.serve(websocket, dialect, read_live_start)

    return router
