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

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, WebSocket
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from api.errors import ApiError, errors
from api.metrics import ApiMetrics
from config.settings import Settings
from engines.base import SAMPLE_RATE, Engine, ModelNotFoundError
from engines.models import UnsupportedLanguageError
from pipeline.call import (
    Admission,
    CallLimits,
    CallSession,
    CapacityError,
    EndReason,
    StreamKind,
)
from pipeline.pcm import PcmInput
from pipeline.runtime import LiveRuntime
from pipeline.sink import AnyFrame
from pipeline.speaker_stream import SpeakerStream
from pipeline.tasks import TaskSet
from protocol import CaptionFrame, ErrorCode
from protocol.listen import (
    CLOSE_IDLE,
    CLOSE_INTERNAL,
    CLOSE_MAX_DURATION,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN,
    CLOSE_UNAUTHORIZED,
    CLOSE_UNSUPPORTED,
    ListenCompleted,
    ListenError,
    ListenReady,
    ListenStart,
)

log = logging.getLogger(__name__)

_PARTIAL_BACKLOG = 256


class Refusal(Exception):
    """Ends a session with an error frame and a close code."""

    def __init__(self, code: ErrorCode, message: str, close_code: int) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.close_code = close_code


def _error(code: ErrorCode, message: str) -> str:
    return ListenError(code=code, message=message).model_dump_json()


class ListenTokens:
    """Short-lived ``token`` query parameters for browsers (which cannot set WebSocket headers).

    A token is ``<expiry>.<nonce>.<hmac>``, signed with the API key that asked for it, so
    removing a key from ``api.api_keys`` also revokes its tokens.
    """

    def __init__(self, api_keys: list[str], ttl_s: float) -> None:
        self.api_keys = api_keys
        self.ttl_s = ttl_s
        self._open_secret = secrets.token_bytes(32)  # auth off: tokens still verify

    def _keys(self) -> list[bytes]:
        return [key.encode() for key in self.api_keys] or [self._open_secret]

    @staticmethod
    def _sign(key: bytes, body: str) -> str:
        digest = hmac.new(key, b"listen:" + body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def issue(self, api_key: str | None) -> tuple[str, float]:
        expires = time.time() + self.ttl_s
        body = f"{int(expires)}.{os.urandom(8).hex()}"
        key = api_key.encode() if api_key else self._open_secret
        return f"{body}.{self._sign(key, body)}", float(int(expires))

    def valid(self, token: str) -> bool:
        body, _, signature = token.rpartition(".")
        expiry = body.split(".", 1)[0]
        if not expiry.isdigit() or int(expiry) < time.time():
            return False
        return any(hmac.compare_digest(self._sign(key, body), signature) for key in self._keys())

    def key_given(self, given: str) -> str | None:
        return next(
            (key for key in self.api_keys if hmac.compare_digest(given.encode(), key.encode())),
            None,
        )

    def authorized(self, websocket: WebSocket) -> bool:
        if not self.api_keys:
            return True
        params = websocket.query_params
        header = websocket.headers.get("authorization", "")
        bearer = header[7:].strip() if header.lower().startswith("bearer ") else ""
        for given in (params.get("api_key"), bearer):
            if given and self.key_given(given):
                return True
        token = params.get("token")
        return token is not None and self.valid(token)


@dataclass
class Ending:
    reason: str
    close_code: int
    error: tuple[ErrorCode, str] | None = None


class _Outbox:
    """Frames for the socket, sent by one writer task. Bound: once ``_PARTIAL_BACKLOG`` frames
    wait (the client reads slowly), partials are dropped, since a later revision replaces
    them; finals and control frames always wait (a session's finals are bounded by its
    maximum duration)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.dropped_partials = 0

    def put(self, text: str, droppable: bool = False) -> None:
        if droppable and self.queue.qsize() >= _PARTIAL_BACKLOG:
            self.dropped_partials += 1
            return
        self.queue.put_nowait(text)

    def close(self) -> None:
        self.queue.put_nowait(None)


class ListenSession:
    """One accepted WebSocket after its start message: a one-participant call."""

    def __init__(
        self,
        websocket: WebSocket,
        runtime: LiveRuntime,
        streaming: set[tuple[str, str]],
        limits: CallLimits,
        start: ListenStart,
    ) -> None:
        self.websocket = websocket
        self.runtime = runtime
        self.streaming = streaming
        self.limits = limits
        assert limits.max_duration_s is not None, "a listen session has a maximum duration"
        self.max_duration_s: float = limits.max_duration_s
        self.start = start
        self.session_id = uuid.uuid4().hex
        self.room = start.room or self.session_id
        self.participant = start.participant or self.session_id
        self.outbox = _Outbox()
        self.connected = True
        self._tasks = TaskSet(f"listen {self.session_id}")
        self._pcm = PcmInput(start.sample_rate, start.channels)
        self._max_samples = int(self.max_duration_s * SAMPLE_RATE)
        self.engine: Engine = runtime.engine
        self.language: str | None = None

    def emit(self, frame: AnyFrame) -> None:
        """The participant's own frames (a :class:`FrameSink` for the call), for the socket."""
        if isinstance(frame, CaptionFrame):
            if frame.type == "partial" and not self.start.interim_results:
                return
            self.outbox.put(frame.model_dump_json(), droppable=frame.type == "partial")
        else:
            self.outbox.put(frame.model_dump_json())

    async def run(self) -> None:
        try:
            self.engine, self.language = await self.runtime.engine_for(self.start.language)
        except UnsupportedLanguageError as exc:
            raise Refusal(ErrorCode.INVALID_REQUEST, str(exc), CLOSE_UNSUPPORTED) from exc
        except ModelNotFoundError as exc:  # the multilingual model is not installed here
            raise Refusal(ErrorCode.MODEL_NOT_FOUND, str(exc), CLOSE_UNSUPPORTED) from exc
        if (self.room, self.participant) in self.streaming:
            raise Refusal(
                ErrorCode.INVALID_CONFIG,
                f"participant {self.participant!r} is already streaming in room {self.room!r}",
                CLOSE_POLICY,
            )
        self.streaming.add((self.room, self.participant))
        try:
            await self._run_call()
        finally:
            self.streaming.discard((self.room, self.participant))

    async def _run_call(self) -> None:
        call = CallSession(self.runtime, self.room, self.limits)
        await call.start()
        try:
            stream = await call.admit(
                self.participant,
                self.start.name,
                self.language,
                StreamKind.WEBSOCKET,
                frames=self,
                engine=self.engine,
            )
        except CapacityError as exc:
            await call.end("refused")
            raise Refusal(ErrorCode.CAPACITY, exc.message, CLOSE_TRY_AGAIN) from None
        ready = ListenReady(
            session_id=self.session_id,
            job_id=call.job_id if self.runtime.handover is not None else None,
            max_duration_seconds=self.max_duration_s,
        )
        writer = self._tasks.spawn(self._write(ready.model_dump_json()), "writer")
        ending = Ending(
            "failed", CLOSE_INTERNAL, (ErrorCode.INTERNAL, "the session failed on the server")
        )
        try:
            ending = await self._read(call, stream)
        finally:
            tail = self._pcm.flush()
            if tail.size and stream.audio_seconds * SAMPLE_RATE < self._max_samples:
                stream.push(tail)
            streamed = stream.audio_seconds
            await call.end(ending.reason)
            if ending.error is not None and ending.error[0] != ErrorCode.MAX_DURATION_REACHED:
                self.outbox.put(_error(*ending.error))
            elif self.connected:
                completed = ListenCompleted(
                    job_id=call.job_id if call.handed_over else None,
                    streamed_seconds=round(streamed, 3),
                    reason=ending.reason,
                )
                self.outbox.put(completed.model_dump_json())
            self.outbox.close()
            await writer
        if self.connected:
            await self.websocket.close(ending.close_code)

    async def _write(self, ready: str) -> None:
        try:
            await self.websocket.send_text(ready)
            while (text := await self.outbox.queue.get()) is not None:
                await self.websocket.send_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.connected = False

    async def _read(self, call: CallSession, stream: SpeakerStream) -> Ending:
        while True:
            try:
                message = await asyncio.wait_for(self.websocket.receive(), call.time_left())
            except TimeoutError:
                if call.expired() is EndReason.MAX_DURATION:
                    return self._max_duration("wall clock")
                return Ending(EndReason.IDLE, CLOSE_IDLE)
            if message["type"] == "websocket.disconnect":
                self.connected = False
                return Ending("disconnected", CLOSE_NORMAL)
            data = message.get("bytes")
            if data is not None:
                if not data:
                    continue
                call.heard()
                samples = self._pcm.convert(data)
                room = self._max_samples - round(stream.audio_seconds * SAMPLE_RATE)
                if samples.size >= room:
                    stream.push(samples[: max(room, 0)])
                    return self._max_duration("audio")
                if samples.size:
                    stream.push(samples)
                continue
            try:
                kind = _message_type(message.get("text") or "")
            except Refusal as refusal:
                return _protocol_error(refusal.message)
            if kind == "end":
                return Ending("end", CLOSE_NORMAL)
            if kind == "start":
                return _protocol_error("the session has already started")
            return _protocol_error(f"unknown message type {kind!r}; expected 'end' or audio")

    def _max_duration(self, what: str) -> Ending:
        message = f"the stream reached its maximum duration of {self.max_duration_s:g} s ({what}); later audio is not accepted"
        self.outbox.put(_error(ErrorCode.MAX_DURATION_REACHED, message))
        return Ending("max_duration", CLOSE_MAX_DURATION, (ErrorCode.MAX_DURATION_REACHED, message))


def _message_type(text: str) -> str:
    try:
        message = json.loads(text)
    except ValueError:
        raise Refusal(
            ErrorCode.PROTOCOL, "text frames must be JSON messages", CLOSE_POLICY
        ) from None
    kind = message.get("type") if isinstance(message, dict) else None
    if not isinstance(kind, str):
        raise Refusal(ErrorCode.PROTOCOL, "a message needs a string 'type'", CLOSE_POLICY)
    return kind


def _protocol_error(message: str) -> Ending:
    return Ending("protocol_error", CLOSE_POLICY, (ErrorCode.PROTOCOL, message))


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'start'}: {e['msg']}" for e in exc.errors()
    )


async def read_start(websocket: WebSocket, timeout_s: float) -> ListenStart:
    try:
        message = await asyncio.wait_for(websocket.receive(), timeout_s)
    except TimeoutError:
        raise Refusal(
            ErrorCode.PROTOCOL, f"no start message within {timeout_s:g} s", CLOSE_POLICY
        ) from None
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    if message.get("bytes") is not None:
        raise Refusal(ErrorCode.PROTOCOL, "binary audio before the start message", CLOSE_POLICY)
    text = message.get("text") or ""
    kind = _message_type(text)
    if kind != "start":
        raise Refusal(
            ErrorCode.PROTOCOL, f"the first message must be 'start', not {kind!r}", CLOSE_POLICY
        )
    try:
        return ListenStart.model_validate_json(text)
    except ValidationError as exc:
        raise Refusal(ErrorCode.INVALID_CONFIG, _describe(exc), CLOSE_UNSUPPORTED) from None


async def _refuse(websocket: WebSocket, refusal: Refusal) -> None:
    try:
        await websocket.send_text(_error(refusal.code, refusal.message))
        await websocket.close(refusal.close_code)
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass


def listen_router(
    runtime: LiveRuntime,
    admission: Admission,
    settings: Settings,
    metrics: ApiMetrics | None = None,
) -> APIRouter:
    """``WS /v1/listen`` and ``POST /v1/listen/token``; refused sockets count in ``metrics``."""
    router = APIRouter(tags=["listen"])
    streaming: set[tuple[str, str]] = set()
    tokens = ListenTokens(settings.api.api_keys, settings.limits.listen_token_ttl_s)

    @router.websocket("/v1/listen")
    async def listen(websocket: WebSocket) -> None:
        await websocket.accept()
        if not tokens.authorized(websocket):
            if metrics is not None:
                metrics.auth_failures.labels("websocket").inc()
            message = "missing, unknown or expired api_key or token"
            await _refuse(websocket, Refusal(ErrorCode.UNAUTHORIZED, message, CLOSE_UNAUTHORIZED))
            return
        try:
            admission.check(StreamKind.WEBSOCKET)
        except CapacityError as error:
            await _refuse(websocket, Refusal(ErrorCode.CAPACITY, error.message, CLOSE_TRY_AGAIN))
            return
        limits = CallLimits(settings.limits.idle_timeout_s, settings.limits.max_stream_s)
        try:
            start = await read_start(websocket, limits.idle_timeout_s)
            await ListenSession(websocket, runtime, streaming, limits, start).run()
        except Refusal as refusal:
            await _refuse(websocket, refusal)
        except WebSocketDisconnect:
            pass
        except Exception:
            log.exception("listen session failed")
            if websocket.application_state != WebSocketState.DISCONNECTED:
                await _refuse(
                    websocket,
                    Refusal(ErrorCode.INTERNAL, "the session failed on the server", CLOSE_INTERNAL),
                )

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
