"""``WS /v1/listen``: a client streams raw PCM and gets its caption frames back.

Text frames are JSON. The client sends

1. ``{"type": "start", "sample_rate": 16000, "channels": 1, "encoding": "pcm_s16le",
   "language": "en", "interim_results": true, "room"?, "participant"?, "name"?}``;
   ``language`` defaults to ``live.language``; ``auto`` detects it; a language the live
   model does not know is served by ``live.multilingual_model``;
2. binary frames of little-endian 16-bit PCM, any size (a frame may split a sample);
3. ``{"type": "end"}``.

The server answers ``{"type": "ready", "session_id", "job_id", "max_duration_seconds"}``,
then ``partial`` (only with ``interim_results``) and ``final`` caption frames (the NATS
frames, see PROTOCOL.md), then ``{"type": "completed", "job_id", "streamed_seconds",
"reason"}`` and closes. 8 to 192 kHz and stereo are resampled to 16 kHz mono. The session is
one call (room = ``room`` or the session id) with one participant: its frames go to NATS
too, its audio is recorded, and when it ends (``end``, a limit, or the client going away)
it is handed over like every call: ``job_id`` is its post-call job
(``GET /v1/transcripts/{job_id}``), the one transcript of the session.

Errors are ``{"type": "error", "code", "message"}`` followed by a close:

============================  ===========  ==============================================
code                          close code   when
============================  ===========  ==============================================
``UNAUTHORIZED``              4001         ``api.api_keys`` set and no valid ``api_key``,
                                           ``token`` or bearer header
``CAPACITY``                  1013         ``limits.max_streams`` streams are running
``PROTOCOL``                  1008         binary before start, non-JSON text, unknown
                                           message type, no start within the idle timeout
``INVALID_CONFIG``            1003         malformed start, unsupported encoding, sample
                                           rate or channel count (1008: the room's
                                           participant id is already streaming)
``INVALID_REQUEST``           1003         a ``language`` no live model recognizes; the
                                           message names the models that do
``MAX_DURATION_REACHED``      4002         ``limits.max_stream_s`` of audio or wall clock:
                                           sent first, then the finals and ``completed``
(no error frame)              4003         no audio for ``limits.idle_timeout_s``:
                                           finals, ``completed`` with reason ``idle``
``INTERNAL``                  1011         the server failed
============================  ===========  ==============================================

A normal end closes with 1000. Error frames that carry ``room`` and ``participant`` (the
NATS error frames, e.g. ``STREAM_OVERLOADED``) only inform: the session goes on.
"""

from typing import Any

from fastapi import APIRouter, Request, WebSocket
from pydantic import ValidationError

from api.errors import ApiError, errors
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
from pipeline.call import Admission, StreamKind
from pipeline.runtime import LiveRuntime
from pipeline.sink import AnyFrame
from protocol import ErrorCode
from protocol.listen import (
    CLOSE_UNSUPPORTED,
    ListenCompleted,
    ListenError,
    ListenReady,
    ListenStart,
)


class ListenDialect(Dialect):
    """roomscribe's own wording: the NATS frames as they are, ready / completed / error."""

    def ready(self, session: StreamSession) -> list[str]:
        ready = ListenReady(
            session_id=session.session_id,
            job_id=session.job_id,
            max_duration_seconds=session.max_duration_s,
        )
        return [ready.model_dump_json()]

    def frame(self, frame: AnyFrame, session: StreamSession) -> list[Outgoing]:
        return [Outgoing(frame.model_dump_json(), droppable=frame.type == "partial")]

    def completed(
        self, session: StreamSession, job_id: str | None, streamed_s: float, reason: str
    ) -> list[str]:
        completed = ListenCompleted(job_id=job_id, streamed_seconds=streamed_s, reason=reason)
        return [completed.model_dump_json()]

    def error(self, code: ErrorCode, message: str) -> str:
        return ListenError(code=code, message=message).model_dump_json()


def describe(exc: ValidationError, what: str = "start") -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or what}: {e['msg']}" for e in exc.errors()
    )


async def read_start(websocket: WebSocket, timeout_s: float) -> ListenStart:
    text = await receive_start_text(websocket, timeout_s)
    try:
        return ListenStart.model_validate_json(text)
    except ValidationError as exc:
        raise Refusal(ErrorCode.INVALID_CONFIG, describe(exc), CLOSE_UNSUPPORTED) from None


def listen_router(
    runtime: LiveRuntime,
    admission: Admission,
    settings: Settings,
    metrics: ApiMetrics | None = None,
) -> APIRouter:
    """``WS /v1/listen`` and ``POST /v1/listen/token``; refused sockets count in ``metrics``."""
    router = APIRouter(tags=["listen"])
    service = StreamService(runtime, admission, settings, metrics)
    tokens = service.tokens
    dialect = ListenDialect()

    @router.websocket("/v1/listen")
    async def listen(websocket: WebSocket) -> None:
        await websocket.accept()
        if not service.authorized(websocket):
            await service.unauthorized(websocket, dialect)
            return
        await service.serve(websocket, dialect, read_start)

    @router.post("/v1/listen/token", responses=errors(401, 503))
    async def issue_token(request: Request) -> dict[str, Any]:
        """A short-lived ``token`` for ``/v1/listen?token=...`` (browsers cannot send headers).

        503 with ``Retry-After`` while every live stream slot is taken."""
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else ""
        key = tokens.key_given(given) if given else None
        if settings.api.api_keys and key is None:
            raise ApiError(
                401,
                ErrorCode.UNAUTHORIZED,
                "missing or unknown API key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        admission.check(StreamKind.WEBSOCKET)
        token, expires_at = tokens.issue(key)
        return {"token": token, "expires_at": expires_at, "expires_in": tokens.ttl_s}

    return router
