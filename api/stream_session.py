"""The one streaming session core behind every WebSocket that takes raw PCM from a client.

A session is one call (room = the given room or the session id) with one participant: its
audio goes through the one resampler (:class:`pipeline.pcm.PcmInput`), its frames go to NATS
and back to the client, its audio is recorded, and when it ends (the client's end message,
a limit, or the client going away) the call is handed over like every call, so the
session's post-call job is its one transcript.

What differs between the APIs served over it (roomscribe's ``/v1/listen`` and the compatible
shapes of ``api/compat/``) is only the wording: a :class:`Dialect` turns the session's
frames into that API's messages and that API's control messages into :class:`Control`.
Authentication (``api.api_keys``, ``token`` query parameters) and admission are shared too.
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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from api.auth import authorization_token
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
from protocol import ErrorCode
from protocol.listen import (
    CLOSE_IDLE,
    CLOSE_INTERNAL,
    CLOSE_MAX_DURATION,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN,
    CLOSE_UNAUTHORIZED,
    CLOSE_UNSUPPORTED,
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


class Control(StrEnum):
    """What a client's text message asks of the session."""

    END = "end"
    KEEPALIVE = "keepalive"
    FINALIZE = "finalize"


@dataclass(frozen=True)
class Outgoing:
    text: str
    droppable: bool = False  # a partial, superseded by the next revision


class Dialect:
    """One API's wording of a session; the defaults are roomscribe's own listen protocol."""

    def ready(self, session: "StreamSession") -> list[str]:
        return []

    def frame(self, frame: AnyFrame, session: "StreamSession") -> list[Outgoing]:
        return []

    def audio(self, data: bytes) -> bytes:
        """The client's audio bytes as s16le (for APIs that accept other encodings)."""
        return data

    def control(self, message: object) -> Control:
        """A parsed JSON text message; raise :class:`Refusal` for anything not understood."""
        kind = message.get("type") if isinstance(message, dict) else None
        if not isinstance(kind, str):
            raise Refusal(ErrorCode.PROTOCOL, "a message needs a string 'type'", CLOSE_POLICY)
        if kind == "end":
            return Control.END
        if kind == "start":
            raise Refusal(ErrorCode.PROTOCOL, "the session has already started", CLOSE_POLICY)
        raise Refusal(
            ErrorCode.PROTOCOL,
            f"unknown message type {kind!r}; expected 'end' or audio",
            CLOSE_POLICY,
        )

    def finalized(self, session: "StreamSession") -> list[str]:
        """Messages once recognition caught up after a :attr:`Control.FINALIZE`."""
        return []

    def completed(
        self, session: "StreamSession", job_id: str | None, streamed_s: float, reason: str
    ) -> list[str]:
        return []

    def error(self, code: ErrorCode, message: str) -> str:
        raise NotImplementedError

    def close_code(self, code: ErrorCode | None, close_code: int) -> int:
        """The close code this API uses where roomscribe's listen protocol uses ``close_code``."""
        return close_code

    async def after(self, session: "StreamSession", job_id: str | None) -> list[str]:
        """Messages once the call is handed over, before ``completed`` (e.g. a summary)."""
        return []


def parse_json(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        raise Refusal(
            ErrorCode.PROTOCOL, "text frames must be JSON messages", CLOSE_POLICY
        ) from None


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

    def authorized(
        self,
        websocket: WebSocket,
        schemes: Sequence[str] = ("bearer",),
        extra: Sequence[str] = (),
    ) -> bool:
        """An API key as ``?api_key=``, in an ``Authorization`` header of one of ``schemes``
        or among ``extra`` (e.g. a subprotocol), or a valid ``?token=`` (an issued token, or
        an API key)."""
        if not self.api_keys:
            return True
        params = websocket.query_params
        header = authorization_token(websocket.headers.get("authorization", ""), schemes)
        token = params.get("token")
        for given in (params.get("api_key"), header, token, *extra):
            if given and self.key_given(given):
                return True
        return any(given and self.valid(given) for given in (token, header))


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


class StreamSession:
    """One accepted WebSocket after its configuration is known: a one-participant call."""

    def __init__(
        self,
        websocket: WebSocket,
        runtime: LiveRuntime,
        streaming: set[tuple[str, str]],
        limits: CallLimits,
        start: ListenStart,
        dialect: Dialect,
    ) -> None:
        self.websocket = websocket
        self.runtime = runtime
        self.streaming = streaming
        self.limits = limits
        assert limits.max_duration_s is not None, "a stream session has a maximum duration"
        self.max_duration_s: float = limits.max_duration_s
        self.start = start
        self.dialect = dialect
        self.session_id = uuid.uuid4().hex
        self.room = start.room or self.session_id
        self.participant = start.participant or self.session_id
        self.outbox = _Outbox()
        self.connected = True
        self.job_id: str | None = None
        self.stream: SpeakerStream | None = None
        self._tasks = TaskSet(f"stream {self.session_id}")
        self._pcm = PcmInput(start.sample_rate, start.channels)
        self._max_samples = int(self.max_duration_s * SAMPLE_RATE)
        self.engine: Engine = runtime.engine
        self.language: str | None = None

    @property
    def audio_seconds(self) -> float:
        return self.stream.audio_seconds if self.stream is not None else 0.0

    def emit(self, frame: AnyFrame) -> None:
        """The participant's own frames (a :class:`FrameSink` for the call), for the socket."""
        if frame.type == "partial" and not self.start.interim_results:
            return
        for out in self.dialect.frame(frame, self):
            self.outbox.put(out.text, out.droppable)

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
        self.stream = stream
        self.job_id = call.job_id if self.runtime.handover is not None else None
        writer = self._tasks.spawn(self._write(self.dialect.ready(self)), "writer")
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
                self.outbox.put(self.dialect.error(*ending.error))
            elif self.connected:
                job_id = call.job_id if call.handed_over else None
                for text in await self._after(job_id):
                    self.outbox.put(text)
                for text in self.dialect.completed(self, job_id, round(streamed, 3), ending.reason):
                    self.outbox.put(text)
            self.outbox.close()
            await writer
        if self.connected:
            code = ending.error[0] if ending.error is not None else None
            await self.websocket.close(self.dialect.close_code(code, ending.close_code))

    async def _after(self, job_id: str | None) -> list[str]:
        try:
            return await self.dialect.after(self, job_id)
        except Exception:
            log.exception("stream %s: the messages after the call failed", self.session_id)
            return [self.dialect.error(ErrorCode.INTERNAL, "the session failed on the server")]

    async def _write(self, ready: list[str]) -> None:
        try:
            for first in ready:
                await self.websocket.send_text(first)
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
                samples = self._pcm.convert(self.dialect.audio(data))
                room = self._max_samples - round(stream.audio_seconds * SAMPLE_RATE)
                if samples.size >= room:
                    stream.push(samples[: max(room, 0)])
                    return self._max_duration("audio")
                if samples.size:
                    stream.push(samples)
                continue
            try:
                control = self.dialect.control(parse_json(message.get("text") or ""))
            except Refusal as refusal:
                return Ending("protocol_error", refusal.close_code, (refusal.code, refusal.message))
            if control is Control.END:
                return Ending("end", CLOSE_NORMAL)
            if control is Control.KEEPALIVE:
                call.heard()
            elif control is Control.FINALIZE:
                call.heard()
                await stream.caught_up()
                for text in self.dialect.finalized(self):
                    self.outbox.put(text)

    def _max_duration(self, what: str) -> Ending:
        message = f"the stream reached its maximum duration of {self.max_duration_s:g} s ({what}); later audio is not accepted"
        self.outbox.put(self.dialect.error(ErrorCode.MAX_DURATION_REACHED, message))
        return Ending("max_duration", CLOSE_MAX_DURATION, (ErrorCode.MAX_DURATION_REACHED, message))


async def refuse(websocket: WebSocket, dialect: Dialect, refusal: Refusal) -> None:
    try:
        await websocket.send_text(dialect.error(refusal.code, refusal.message))
        await websocket.close(dialect.close_code(refusal.code, refusal.close_code))
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass


StartReader = Callable[[WebSocket, float], Awaitable[ListenStart]]


class StreamService:
    """What every streaming route shares: the live runtime, admission, limits and keys."""

    def __init__(
        self,
        runtime: LiveRuntime,
        admission: Admission,
        settings: Settings,
        metrics: ApiMetrics | None = None,
    ) -> None:
        self.runtime = runtime
        self.admission = admission
        self.settings = settings
        self.metrics = metrics
        self.streaming: set[tuple[str, str]] = set()
        self.tokens = ListenTokens(settings.api.api_keys, settings.limits.listen_token_ttl_s)

    def limits(self) -> CallLimits:
        return CallLimits(self.settings.limits.idle_timeout_s, self.settings.limits.max_stream_s)

    def authorized(
        self, websocket: WebSocket, schemes: Sequence[str] = ("bearer",), extra: Sequence[str] = ()
    ) -> bool:
        """:meth:`ListenTokens.authorized`, a refusal counted in the metrics."""
        if self.tokens.authorized(websocket, schemes, extra):
            return True
        if self.metrics is not None:
            self.metrics.auth_failures.labels("websocket").inc()
        return False

    async def serve(self, websocket: WebSocket, dialect: Dialect, read_start: StartReader) -> None:
        """An accepted, authorized socket: admission, its configuration, then the session."""
        try:
            self.admission.check(StreamKind.WEBSOCKET)
        except CapacityError as error:
            await refuse(
                websocket, dialect, Refusal(ErrorCode.CAPACITY, error.message, CLOSE_TRY_AGAIN)
            )
            return
        limits = self.limits()
        try:
            start = await read_start(websocket, limits.idle_timeout_s)
            session = StreamSession(websocket, self.runtime, self.streaming, limits, start, dialect)
            await session.run()
        except Refusal as refusal:
            await refuse(websocket, dialect, refusal)
        except WebSocketDisconnect:
            pass
        except Exception:
            log.exception("stream session failed")
            if websocket.application_state != WebSocketState.DISCONNECTED:
                await refuse(
                    websocket,
                    dialect,
                    Refusal(ErrorCode.INTERNAL, "the session failed on the server", CLOSE_INTERNAL),
                )

    async def unauthorized(self, websocket: WebSocket, dialect: Dialect) -> None:
        message = "missing, unknown or expired api_key or token"
        await refuse(
            websocket, dialect, Refusal(ErrorCode.UNAUTHORIZED, message, CLOSE_UNAUTHORIZED)
        )


async def receive_start_text(websocket: WebSocket, timeout_s: float) -> str:
    """The first message, which must be a JSON text message (a ``start``)."""
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
    text: str = message.get("text") or ""
    parsed = parse_json(text)
    kind = parsed.get("type") if isinstance(parsed, dict) else None
    if not isinstance(kind, str):
        raise Refusal(ErrorCode.PROTOCOL, "a message needs a string 'type'", CLOSE_POLICY)
    if kind != "start":
        raise Refusal(
            ErrorCode.PROTOCOL, f"the first message must be 'start', not {kind!r}", CLOSE_POLICY
        )
    return text
