"""``WS /deepgram/v1/listen``: Deepgram's live transcription WebSocket, over the shared stream
session (:mod:`api.stream_session`), for clients written against Deepgram (its SDKs point at
``wss://api.deepgram.com``; here the base URL becomes ``ws(s)://<roomscribe>/deepgram``).

Why a base path of its own: Deepgram's clients connect to ``/v1/listen``, which is roomscribe's
own protocol (its first message is a JSON ``start``, binary before it is a ``PROTOCOL``
error); serving both on one path would mean guessing the protocol from the query string.
Under ``/deepgram`` nothing is guessed and ``/v1/listen`` keeps its contract.

Authentication: ``Authorization: Token <API key>`` (Deepgram's scheme), ``Authorization: Bearer
<API key or token>``, the ``Sec-WebSocket-Protocol: token, <API key>`` pair browsers use, or
``?api_key=`` / ``?token=``. A refused handshake is an HTTP error in Deepgram's REST shape
``{"err_code", "err_msg", "request_id"}``: 401 for credentials, 400 for query parameters,
429 while every live stream slot is taken.

Query parameters: ``encoding`` (``linear16``, ``mulaw``, ``alaw``; required: containerized
audio is not read), ``sample_rate`` (8000 to 192000, required), ``channels`` (1 or 2, mixed to
one; ``multichannel=true`` is refused), ``interim_results`` (default false), ``punctuate`` /
``smart_format`` (punctuated, cased ``transcript`` and ``punctuated_word``; otherwise lower
case without punctuation), ``diarize`` (each word gets ``speaker`` 0: a stream is one
participant), ``endpointing`` (``false``: finals are never ``speech_final``; a number of
milliseconds: accepted, the live model closes utterances at its own voice-activity
endpoints), ``utterance_end_ms`` (an ``UtteranceEnd`` after each final), ``vad_events``
(``SpeechStarted`` at each utterance's first result), ``language`` (``en-US`` is read as
``en``, ``multi`` as automatic detection). ``model`` and the others are accepted and ignored:
the live model answers, named in ``metadata.model_info``.

Messages: ``Results`` (``is_final``, ``speech_final``, ``from_finalize``,
``channel.alternatives[0]`` with ``transcript``, ``confidence``, ``words``), ``SpeechStarted``,
``UtteranceEnd``, and ``Metadata`` (``request_id``, ``sha256`` of the audio received,
``duration``, ``channels``) when the stream closes. The client may send ``KeepAlive`` (resets
the idle timer), ``Finalize`` (answered, once recognition has caught up with the audio sent,
by an empty final ``Results`` with ``from_finalize``; an utterance still open keeps going and
gets its own final) and ``CloseStream`` (the last finals, ``Metadata``, close 1000). Other text
is an ``Error`` (``variant`` ``SchemaError``) and a close. The session is saved as a normal
job, ``Metadata.extra.job_id`` (``GET /v1/transcripts/{job_id}``).
"""

import hashlib
import json
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse

from api.metrics import ApiMetrics
from api.stream_session import Control, Dialect, Outgoing, Refusal, StreamService, StreamSession
from config.settings import Settings
from pipeline.call import Admission, CapacityError, StreamKind
from pipeline.runtime import LiveRuntime
from pipeline.sink import AnyFrame
from protocol import CaptionFrame, ErrorCode
from protocol.listen import CLOSE_IDLE, CLOSE_INTERNAL, CLOSE_POLICY, ListenStart

PREFIX = "/deepgram"
PATH = PREFIX + "/v1/listen"
CHANNEL = [0, 1]
_CLOSE_DATA = 1008  # Deepgram's DATA-* closes
_CLOSE_NET = 1011  # Deepgram's NET-* closes (idle, server)


def _mulaw_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    magnitude = (((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 0x07)
    return np.where(u & 0x80, 0x84 - magnitude, magnitude - 0x84).astype("<i2")


def _alaw_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    mantissa, exponent = a & 0x0F, (a >> 4) & 0x07
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    return np.where(a & 0x80, magnitude, -magnitude).astype("<i2")


G711 = {"mulaw": _mulaw_table(), "alaw": _alaw_table()}
ENCODINGS = ("linear16", *G711)


class BadParameter(ValueError):
    pass


def _flag(query: Mapping[str, str], name: str, default: bool = False) -> bool:
    value = query.get(name)
    if value is None:
        return default
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise BadParameter(f"{name}: expected true or false, got {value!r}")


def _number(query: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise BadParameter(f"{name}: expected an integer, got {value!r}") from None
    if not low <= number <= high:
        raise BadParameter(f"{name}: {number} is outside {low} to {high}")
    return number


def _language(value: str | None) -> str | None:
    if value is None:
        return None
    if value.lower() == "multi":
        return "auto"
    return value.split("-", 1)[0].lower() or None


@dataclass
class DeepgramOptions:
    """The query parameters this server honours (see the module's docstring)."""

    encoding: str
    sample_rate: int
    channels: int = 1
    interim_results: bool = False
    punctuate: bool = False
    diarize: bool = False
    endpointing: bool = True
    utterance_end_ms: int | None = None
    vad_events: bool = False
    language: str | None = None

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> "DeepgramOptions":
        encoding = query.get("encoding")
        if encoding is None:
            raise BadParameter(
                f"encoding is required: this server takes raw audio ({', '.join(ENCODINGS)})"
            )
        if encoding not in ENCODINGS:
            raise BadParameter(
                f"encoding {encoding!r} is not supported; supported: {', '.join(ENCODINGS)}"
            )
        sample_rate = _number(query, "sample_rate", 8000, 192_000)
        if sample_rate is None:
            raise BadParameter("sample_rate is required with encoding")
        if _flag(query, "multichannel"):
            raise BadParameter("multichannel=true is not supported: channels are mixed to one")
        endpointing = query.get("endpointing", "10")
        if endpointing.lower() != "false":
            _number(query, "endpointing", 0, 60_000)
        return cls(
            encoding=encoding,
            sample_rate=sample_rate,
            channels=_number(query, "channels", 1, 2) or 1,
            interim_results=_flag(query, "interim_results"),
            punctuate=_flag(query, "punctuate") or _flag(query, "smart_format"),
            diarize=_flag(query, "diarize"),
            endpointing=endpointing.lower() != "false",
            utterance_end_ms=_number(query, "utterance_end_ms", 1, 60_000),
            vad_events=_flag(query, "vad_events"),
            language=_language(query.get("language")),
        )


def _plain(word: str) -> str:
    return re.sub(r"[^\w'-]+", "", word.lower()).strip("'-")


@dataclass
class DeepgramDialect(Dialect):
    options: DeepgramOptions
    model: str
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created: float = field(default_factory=time.time)
    _sha256: Any = field(default_factory=hashlib.sha256)
    _heard: set[str] = field(default_factory=set)
    _last_end: float = 0.0

    @property
    def model_uuid(self) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"roomscribe:{self.model}"))

    def model_info(self) -> dict[str, str]:
        return {"name": self.model, "version": "roomscribe-live", "arch": "roomscribe"}

    def audio(self, data: bytes) -> bytes:
        self._sha256.update(data)
        table = G711.get(self.options.encoding)
        if table is None:
            return data
        return table[np.frombuffer(data, np.uint8)].tobytes()

    def control(self, message: object) -> Control:
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "KeepAlive":
            return Control.KEEPALIVE
        if kind == "Finalize":
            return Control.FINALIZE
        if kind == "CloseStream":
            return Control.END
        raise Refusal(
            ErrorCode.PROTOCOL,
            f"unknown message type {kind!r}; expected KeepAlive, Finalize, CloseStream or audio",
            CLOSE_POLICY,
        )

    def _words(self, frame: CaptionFrame) -> list[dict[str, Any]]:
        words = []
        for w in frame.words:
            word: dict[str, Any] = {
                "word": _plain(w.word),
                "start": w.start,
                "end": w.end,
                "confidence": w.confidence,
            }
            if self.options.punctuate:
                word["punctuated_word"] = w.word.strip()
            if self.options.diarize:
                word["speaker"] = 0
                word["speaker_confidence"] = 1.0
            words.append(word)
        return words

    def results(
        self,
        start: float,
        end: float,
        is_final: bool,
        transcript: str = "",
        words: list[dict[str, Any]] | None = None,
        from_finalize: bool = False,
    ) -> dict[str, Any]:
        words = words or []
        confidence = sum(w["confidence"] for w in words) / len(words) if words else 0.0
        return {
            "type": "Results",
            "channel_index": CHANNEL,
            "duration": round(max(end - start, 0.0), 3),
            "start": start,
            "is_final": is_final,
            "speech_final": is_final and self.options.endpointing and not from_finalize,
            "from_finalize": from_finalize,
            "channel": {
                "alternatives": [
                    {"transcript": transcript, "confidence": round(confidence, 3), "words": words}
                ]
            },
            "metadata": {
                "request_id": self.request_id,
                "model_info": self.model_info(),
                "model_uuid": self.model_uuid,
            },
        }

    def frame(self, frame: AnyFrame, session: StreamSession) -> list[Outgoing]:
        if not isinstance(frame, CaptionFrame):
            if frame.type == "error":  # informs (e.g. recognition fell behind); goes on
                return [Outgoing(self.error(frame.code, frame.message))]  # type: ignore[arg-type]
            return []
        out: list[Outgoing] = []
        if self.options.vad_events and frame.segment_id not in self._heard:
            self._heard.add(frame.segment_id)
            started = {"type": "SpeechStarted", "channel": CHANNEL, "timestamp": frame.start}
            out.append(Outgoing(_json(started)))
        final = frame.type == "final"
        if not final and not self.options.interim_results:
            return out
        words = self._words(frame)
        if self.options.punctuate:
            transcript = frame.text.strip()
        else:
            transcript = " ".join(w["word"] for w in words) if words else _plain(frame.text)
        message = self.results(frame.start, frame.end, final, transcript, words)
        out.append(Outgoing(_json(message), droppable=not final))
        if final:
            self._heard.discard(frame.segment_id)
            self._last_end = max(self._last_end, frame.end)
            if self.options.utterance_end_ms is not None and words:
                utterance_end = {
                    "type": "UtteranceEnd",
                    "channel": CHANNEL,
                    "last_word_end": words[-1]["end"],
                }
                out.append(Outgoing(_json(utterance_end)))
        return out

    def finalized(self, session: StreamSession) -> list[str]:
        at = round(session.audio_seconds, 3)
        message = self.results(min(self._last_end, at), at, True, from_finalize=True)
        return [_json(message)]

    def completed(
        self, session: StreamSession, job_id: str | None, streamed_s: float, reason: str
    ) -> list[str]:
        metadata = {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "sha256": self._sha256.hexdigest(),
            "created": datetime.fromtimestamp(self.created, UTC).isoformat(),
            "duration": streamed_s,
            "channels": self.options.channels,
            "models": [self.model_uuid],
            "model_info": {self.model_uuid: self.model_info()},
            "extra": {"job_id": job_id, "session_id": session.session_id, "reason": reason},
        }
        return [_json(metadata)]

    def error(self, code: ErrorCode, message: str) -> str:
        variant = "SchemaError" if code == ErrorCode.PROTOCOL else str(code)
        return _json({"type": "Error", "variant": variant, "description": message, "code": code})

    def close_code(self, code: ErrorCode | None, close_code: int) -> int:
        if code in (ErrorCode.PROTOCOL, ErrorCode.INVALID_CONFIG, ErrorCode.INVALID_REQUEST):
            return _CLOSE_DATA
        if close_code in (CLOSE_IDLE, CLOSE_INTERNAL):
            return _CLOSE_NET
        return close_code


def _json(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def _denial(status: int, err_code: str, message: str, request_id: str) -> JSONResponse:
    body = {"err_code": err_code, "err_msg": message, "request_id": request_id}
    return JSONResponse(body, status_code=status, headers={"dg-request-id": request_id})


def deepgram_router(
    runtime: LiveRuntime,
    admission: Admission,
    settings: Settings,
    metrics: ApiMetrics | None = None,
) -> APIRouter:
    """``WS /deepgram/v1/listen``."""
    router = APIRouter(tags=["compat: deepgram"])
    service = StreamService(runtime, admission, settings, metrics)

    @router.websocket(PATH)
    async def listen(websocket: WebSocket) -> None:
        request_id = str(uuid.uuid4())
        offered = websocket.scope.get("subprotocols") or []
        subprotocol_key = offered[1] if len(offered) == 2 and offered[0] == "token" else None
        if not service.authorized(
            websocket, ("token", "bearer"), [subprotocol_key] if subprotocol_key else []
        ):
            message = "Invalid credentials."
            await websocket.send_denial_response(_denial(401, "INVALID_AUTH", message, request_id))
            return
        try:
            options = DeepgramOptions.parse(websocket.query_params)
        except BadParameter as exc:
            await websocket.send_denial_response(_denial(400, "Bad Request", str(exc), request_id))
            return
        try:
            admission.check(StreamKind.WEBSOCKET)
        except CapacityError as exc:
            denial = _denial(429, "TOO_MANY_REQUESTS", exc.message, request_id)
            await websocket.send_denial_response(denial)
            return
        dialect = DeepgramDialect(options, runtime.engine.info.name, request_id)
        await websocket.accept(
            subprotocol="token" if subprotocol_key else None,
            headers=[(b"dg-request-id", request_id.encode())],
        )
        config = ListenStart(
            type="start",
            sample_rate=options.sample_rate,
            channels=options.channels,
            language=options.language,
            interim_results=True,  # the dialect drops interims itself (SpeechStarted needs them)
        )

        async def read_start(ws: WebSocket, timeout_s: float) -> ListenStart:
            return config

        await service.serve(websocket, dialect, read_start)

    return router
