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
its live finals are stored as the completed transcript job ``job_id``
(``GET /v1/transcripts/{job_id}``).

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
                                           finals, ``completed`` with reason ``idle_timeout``
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import av
import numpy as np
from fastapi import APIRouter, Request, WebSocket
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.websockets import WebSocketDisconnect, WebSocketState

from api.admission import Admission, Lease, StreamKind
from api.errors import ApiError, errors
from api.metrics import ApiMetrics
from config.settings import Settings
from engines.base import SAMPLE_RATE, Engine, ModelNotFoundError
from engines.models import UnsupportedLanguageError
from pipeline.call import CallSession
from pipeline.jobs import JobKind, JobOptions, JobRecord, JobSource, JobState, JobStore, new_job_id
from pipeline.results import store_results
from pipeline.runtime import LiveRuntime
from pipeline.sink import AnyFrame, FrameSink
from pipeline.speaker_stream import SpeakerStream
from pipeline.tasks import spawn
from protocol import CaptionFrame, ErrorCode, ErrorFrame
from protocol.transcript import Segment, Speaker, Transcript

log = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013
CLOSE_UNAUTHORIZED = 4001
CLOSE_MAX_DURATION = 4002
CLOSE_IDLE = 4003

ENCODINGS = ("pcm_s16le",)
_PARTIAL_BACKLOG = 256


class StartMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["start"]
    language: str | None = Field(default=None, min_length=1, max_length=16)
    sample_rate: int = Field(default=SAMPLE_RATE, ge=8000, le=192_000)
    channels: int = Field(default=1, ge=1, le=2)
    encoding: str = "pcm_s16le"
    interim_results: bool = True
    room: str | None = Field(default=None, min_length=1, max_length=256)
    participant: str | None = Field(default=None, min_length=1, max_length=256)
    name: str | None = Field(default=None, max_length=256)

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        if value not in ENCODINGS:
            raise ValueError(f"unsupported encoding {value!r}; supported: {', '.join(ENCODINGS)}")
        return value


class Refusal(Exception):
    """Ends a session with an error frame and a close code."""

    def __init__(self, code: str, message: str, close_code: int) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.close_code = close_code


def _error(code: str, message: str) -> str:
    return json.dumps({"type": "error", "code": code, "message": message})


class PcmInput:
    """Client bytes (s16le, any rate, one or two channels, any chunking) -> 16 kHz mono int16."""

    def __init__(self, sample_rate: int, channels: int) -> None:
        self.channels = channels
        self._frame_bytes = 2 * channels
        self._carry = b""
        self._sample_rate = sample_rate
        self._resampler = (
            av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            if sample_rate != SAMPLE_RATE
            else None
        )

    def convert(self, data: bytes) -> np.ndarray:
        data = self._carry + data
        usable = len(data) - len(data) % self._frame_bytes
        self._carry = data[usable:]
        samples = np.frombuffer(data[:usable], "<i2")
        if self.channels > 1:
            # numpy mean instead of swresample's rematrix, which boosts in-phase stereo by 3 dB
            samples = samples.reshape(-1, self.channels).mean(axis=1).round().astype(np.int16)
        if self._resampler is None or not samples.size:
            return samples.astype(np.int16, copy=False)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = self._sample_rate
        return self._collect(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        """What the resampler still holds (a trailing partial sample is dropped)."""
        if self._resampler is None:
            return np.zeros(0, np.int16)
        return self._collect(self._resampler.resample(None))

    @staticmethod
    def _collect(frames: list[av.AudioFrame]) -> np.ndarray:
        if not frames:
            return np.zeros(0, np.int16)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.int16)


class FrameTap:
    """Wraps the runtime's sink: every frame goes on, and a listening session also gets the
    caption and error frames of its own (room, participant)."""

    def __init__(self, inner: FrameSink) -> None:
        self.inner = inner
        self._routes: dict[tuple[str, str], Callable[[AnyFrame], None]] = {}

    def emit(self, frame: AnyFrame) -> None:
        self.inner.emit(frame)
        if isinstance(frame, CaptionFrame | ErrorFrame) and frame.room and frame.participant:
            route = self._routes.get((frame.room, frame.participant))
            if route is not None:
                route(frame)

    def attach(self, room: str, participant: str, route: Callable[[AnyFrame], None]) -> bool:
        if (room, participant) in self._routes:
            return False
        self._routes[(room, participant)] = route
        return True

    def detach(self, room: str, participant: str) -> None:
        self._routes.pop((room, participant), None)


def install_tap(runtime: LiveRuntime) -> FrameTap:
    if isinstance(runtime.sink, FrameTap):
        return runtime.sink
    tap = FrameTap(runtime.sink)
    runtime.sink = tap
    return tap


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
    error: tuple[str, str] | None = None


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
        tap: FrameTap,
        store: JobStore | None,
        lease: Lease,
        start: StartMessage,
    ) -> None:
        self.websocket = websocket
        self.runtime = runtime
        self.tap = tap
        self.store = store
        self.lease = lease
        self.start = start
        self.session_id = uuid.uuid4().hex
        self.room = start.room or self.session_id
        self.participant = start.participant or self.session_id
        self.job_id = new_job_id() if store is not None else None
        self.finals: list[CaptionFrame] = []
        self.outbox = _Outbox()
        self.connected = True
        self._pcm = PcmInput(start.sample_rate, start.channels)
        self.engine: Engine = runtime.engine
        self.language: str | None = None
        self._max_samples = int(lease.max_duration_s * SAMPLE_RATE)

    def _route(self, frame: AnyFrame) -> None:
        if isinstance(frame, CaptionFrame):
            if frame.type == "final":
                if frame.text.strip():
                    self.finals.append(frame)
            elif not self.start.interim_results:
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
        if not self.tap.attach(self.room, self.participant, self._route):
            raise Refusal(
                ErrorCode.INVALID_CONFIG,
                f"participant {self.participant!r} is already streaming in room {self.room!r}",
                CLOSE_POLICY,
            )
        try:
            await self._run_call()
        finally:
            self.tap.detach(self.room, self.participant)

    async def _run_call(self) -> None:
        call = CallSession(self.runtime, self.room)
        await call.start()
        stream = call.add_participant(
            self.participant, self.start.name, self.language, engine=self.engine
        )
        ready = {
            "type": "ready",
            "session_id": self.session_id,
            "job_id": self.job_id,
            "max_duration_seconds": self.lease.max_duration_s,
        }
        writer = spawn(self._write(json.dumps(ready)), f"listen-writer:{self.session_id}")
        ending = Ending(
            "failed", CLOSE_INTERNAL, (ErrorCode.INTERNAL, "the session failed on the server")
        )
        try:
            ending = await self._read(stream)
        finally:
            tail = self._pcm.flush()
            if tail.size and stream.audio_seconds * SAMPLE_RATE < self._max_samples:
                stream.push(tail)
            streamed = stream.audio_seconds
            await call.end(ending.reason)
            saved = await self._save(call.call_id, stream.offset + streamed)
            if ending.error is not None and ending.error[0] != ErrorCode.MAX_DURATION_REACHED:
                self.outbox.put(_error(*ending.error))
            elif self.connected:
                completed = {
                    "type": "completed",
                    "job_id": self.job_id if saved else None,
                    "streamed_seconds": round(streamed, 3),
                    "reason": ending.reason,
                }
                self.outbox.put(json.dumps(completed))
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

    async def _read(self, stream: SpeakerStream) -> Ending:
        last_audio = time.monotonic()
        while True:
            until = min(last_audio + self.lease.idle_timeout_s, self.lease.deadline)
            try:
                message = await asyncio.wait_for(
                    self.websocket.receive(), max(until - time.monotonic(), 0.0)
                )
            except TimeoutError:
                if time.monotonic() >= self.lease.deadline:
                    return self._max_duration("wall clock")
                return Ending("idle_timeout", CLOSE_IDLE)
            if message["type"] == "websocket.disconnect":
                self.connected = False
                return Ending("disconnected", CLOSE_NORMAL)
            data = message.get("bytes")
            if data is not None:
                if not data:
                    continue
                last_audio = time.monotonic()
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
        message = f"the stream reached its maximum duration of {self.lease.max_duration_s:g} s ({what}); later audio is not accepted"
        self.outbox.put(_error(ErrorCode.MAX_DURATION_REACHED, message))
        return Ending("max_duration", CLOSE_MAX_DURATION, (ErrorCode.MAX_DURATION_REACHED, message))

    async def _save(self, call_id: str, duration: float) -> bool:
        if self.store is None or self.job_id is None:
            return False
        transcript = Transcript(
            id=self.job_id,
            language=self.language or next((f.language for f in self.finals if f.language), None),
            model=self.engine.info.name,
            duration=round(duration, 3),
            speakers=[Speaker(id=self.participant, name=self.start.name)],
            segments=[
                Segment(
                    id=f.segment_id,
                    speaker=f.participant,
                    start=f.start,
                    end=f.end,
                    text=f.text.strip(),
                    words=f.words,
                    live_segment_ids=[f.segment_id],
                )
                for f in self.finals
            ],
        )
        try:
            results = await store_results(self.store, self.job_id, transcript)
            now = time.time()
            await self.store.create(
                JobRecord(
                    id=self.job_id,
                    kind=JobKind.POSTCALL,
                    status=JobState.COMPLETED,
                    progress=100,
                    message="live transcript of a /v1/listen session",
                    created_at=now,
                    updated_at=now,
                    source=JobSource(type="call", call_id=call_id),
                    options=JobOptions(language=self.language),
                    results=results,
                )
            )
        except Exception:
            log.exception("could not store the transcript of listen session %s", self.session_id)
            return False
        return True


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


async def read_start(websocket: WebSocket, timeout_s: float) -> StartMessage:
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
        return StartMessage.model_validate_json(text)
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
    store: JobStore | None,
    settings: Settings,
    metrics: ApiMetrics | None = None,
) -> APIRouter:
    """``WS /v1/listen`` and ``POST /v1/listen/token``; installs a :class:`FrameTap` on the
    runtime's sink so sessions see their own frames; refused sockets count in ``metrics``."""
    router = APIRouter(tags=["listen"])
    tap = install_tap(runtime)
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
        lease = admission.try_acquire(StreamKind.WEBSOCKET)
        if lease is None:
            error = admission.capacity_error()
            await _refuse(websocket, Refusal(ErrorCode.CAPACITY, error.message, CLOSE_TRY_AGAIN))
            return
        try:
            start = await read_start(websocket, lease.idle_timeout_s)
            await ListenSession(websocket, runtime, tap, store, lease, start).run()
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
        finally:
            admission.release(lease)

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
