"""``WS /transcribe``: the Jitsi Videobridge's transcription socket.

The bridge (JVB) opens one socket per conference and sends every participant's Opus packets
on it, each tagged with its stream (the protocol of ``jitsi/opus-transcriber-proxy``)::

    ws(s)://HOST/transcribe?sessionId=ROOM&sendBack=true&sendBackInterim=true&lang=en&encoding=opus

Client text frames (JSON):

* ``{"event": "start", "start": {"tag", "mediaFormat": {"encoding", "sampleRate",
  "channels"}, "customParameters": {"endpointId"}}}``: optional, announces a tag;
* ``{"event": "media", "media": {"tag", "chunk", "timestamp", "payload"}}``: one Opus packet
  (``encoding=opus``, base64) or one Ogg page (``encoding=ogg-opus``); ``chunk`` and
  ``timestamp`` (the RTP timestamp, 48 kHz) may be numbers or digit strings;
* ``{"event": "ping", "id"}``: answered ``{"event": "pong", "id"}``.

Server text frames: ``{"type": "transcription-result", "event": "transcription-result",
"is_interim", "transcript": [{"text", "confidence"}], "participant": {"id", "tag", "ssrc"?},
"message_id", "timestamp", "language"}``: finals with ``sendBack=true``, interims with
``sendBackInterim=true``. ``message_id`` is the caption segment, shared by its interims and its
final; ``timestamp`` is the wall clock (epoch ms) at which the segment's speech began.

The socket is one call (room = ``sessionId``); each tag is one participant stream (its
participant id is the endpoint id, the tag's part before ``-<ssrc>``, or the start event's
``customParameters.endpointId``) with its own recognizer, recorded and on NATS like every
other stream; when the socket closes the call is handed over to post-call (one job). A second
socket for the same ``sessionId`` takes the room over: the first one's call ends.

Audio time comes from the RTP timestamps (else the chunk numbers): missing packets become
silence, packets a few frames out of order are put back in order, duplicates and packets too
late to place are dropped. Bad input (malformed JSON, unknown events, media without a tag, bad
base64, undecodable Opus, a malformed Ogg page, duplicates, late packets) is logged and counted
(``roomscribe_jitsi_rejected_messages{reason}``); the socket and the other participants go on.
The socket closes with a code and reason only for: missing ``sessionId`` or an unknown
``encoding`` (1008), a ``lang`` no live model recognizes (1003), no credentials when
``api.api_keys`` is set (4001: ``Authorization: Bearer KEY``, ``?token=KEY`` or a token from
``POST /v1/listen/token``), no message at all for ``limits.idle_timeout_s`` (4003) or the
call's maximum duration (4002).
"""

import asyncio
import base64
import binascii
import contextlib
import heapq
import json
import logging
import re
import time
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

import av
import numpy as np
from fastapi import APIRouter, WebSocket
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel
from starlette.websockets import WebSocketDisconnect, WebSocketState

from api.metrics import ApiMetrics
from api.stream_session import ListenTokens
from config.settings import Settings
from engines.base import SAMPLE_RATE, Engine, ModelNotFoundError
from engines.models import UnsupportedLanguageError
from pipeline.call import (
    CallEndedError,
    CallLimits,
    CallSession,
    CapacityError,
    EndReason,
    StreamKind,
)
from pipeline.pcm import PcmConverter
from pipeline.runtime import LiveRuntime
from pipeline.sink import AnyFrame
from pipeline.speaker_stream import SpeakerStream
from protocol import CaptionFrame
from protocol.listen import (
    CLOSE_IDLE,
    CLOSE_MAX_DURATION,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_UNAUTHORIZED,
    CLOSE_UNSUPPORTED,
)

log = logging.getLogger(__name__)

OPUS_RATE = 48_000
REORDER_DEPTH = 4  # packets held back per tag to put reordered ones in place (80 ms at 20 ms)
_HELD_S = 0.1  # a tag that sent nothing for this long hands over what it holds
# A muted or DTX sender sends nothing in silence, so its last words would wait for its next
# turn: once quiet this long (wall clock), its stream hears silence, up to _QUIET_FILL_S and
# _QUIET_MARGIN_S short of the quiet time, so later packets (placed by their RTP time) are
# not cut.
_QUIET_S = 1.0
_QUIET_MARGIN_S = 0.5
_QUIET_FILL_S = 1.5
_BATCH_S = 0.1  # audio goes to the speaker stream in pieces of this length
_TICK_S = 0.05
_RESYNC_AFTER = 25  # packets in a row from before what was played: the sender's clock restarted
_OUT_BACKLOG = 512
_TAG = re.compile(r"^([0-9A-Za-z]+)-(\d+)$")
_RTP_WRAP = 1 << 32

REJECT_REASONS = (
    "malformed_json",
    "unknown_event",
    "invalid_media",
    "bad_base64",
    "undecodable_opus",
    "bad_ogg",
    "duplicate",
    "late",
    "unsupported_encoding",
    "capacity",
    "binary_frame",
)


# --- wire records (this API's own shape) ------------------------------------------------


class TranscriptAlternative(BaseModel):
    text: str
    confidence: float | None = None


class ResultParticipant(BaseModel):
    id: str
    tag: str | None = None
    ssrc: str | None = None


class TranscriptionResult(BaseModel):
    type: Literal["transcription-result"] = "transcription-result"
    event: Literal["transcription-result"] = "transcription-result"
    is_interim: bool
    transcript: list[TranscriptAlternative]
    participant: ResultParticipant
    message_id: str
    timestamp: int
    language: str | None = None


@dataclass(frozen=True)
class MediaPacket:
    tag: str
    payload: bytes
    chunk: int | None
    timestamp: int | None


class Rejected(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _number(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def parse_message(text: str) -> dict[str, Any]:
    """One client text frame; raises :class:`Rejected` when it is not a JSON object."""
    try:
        message = json.loads(text)
    except ValueError:
        raise Rejected("malformed_json", "a text frame that is not JSON") from None
    if not isinstance(message, dict):
        raise Rejected("malformed_json", "a JSON message that is not an object")
    return message


def parse_media(message: dict[str, Any]) -> MediaPacket:
    media = message.get("media")
    if not isinstance(media, dict):
        raise Rejected("invalid_media", "a media event without a media object")
    tag = media.get("tag")
    if not isinstance(tag, str) or not tag:
        raise Rejected("invalid_media", "a media event without a tag")
    payload = media.get("payload")
    if not isinstance(payload, str) or not payload:
        raise Rejected("invalid_media", f"tag {tag!r}: a media event without a payload")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise Rejected("bad_base64", f"tag {tag!r}: the payload is not base64") from None
    if not data:
        raise Rejected("invalid_media", f"tag {tag!r}: an empty payload")
    return MediaPacket(tag, data, _number(media.get("chunk")), _number(media.get("timestamp")))


def participant_of(tag: str) -> tuple[str, str | None]:
    """Endpoint id and SSRC of a JVB tag (``<endpoint>-<ssrc>``); any other tag is its own id."""
    match = _TAG.match(tag)
    return (match[1], match[2]) if match else (tag, None)


def spoken_language(lang: str | None) -> str | None:
    """``lang`` as the live models know it: ``en-US`` -> ``en``; empty -> the default."""
    if not lang:
        return None
    return lang.strip().split("-")[0].split("_")[0].lower() or None


# --- packet order ----------------------------------------------------------------------


class Unwrapper:
    """32-bit RTP timestamps (or chunk counters) -> a monotonic count that survives wrapping."""

    def __init__(self, modulus: int = _RTP_WRAP) -> None:
        self.modulus = modulus
        self._last: int | None = None
        self._base = 0

    def __call__(self, value: int) -> int:
        value %= self.modulus
        if self._last is not None:
            delta = value - self._last
            if delta < -self.modulus // 2:
                self._base += self.modulus
            elif delta > self.modulus // 2:
                self._base -= self.modulus
        self._last = value
        return self._base + value


class Reorder:
    """Holds up to ``depth`` packets per stream and releases them in key order; what comes
    after a later packet was released is ``late``, a key seen again is a ``duplicate``."""

    def __init__(self, depth: int = REORDER_DEPTH) -> None:
        self.depth = depth
        self._heap: list[tuple[int, bytes]] = []
        self._held: set[int] = set()
        self._released: deque[int] = deque(maxlen=64)
        self._last: int | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, key: int, payload: bytes) -> list[tuple[int, bytes]]:
        if key in self._held or key in self._released:
            raise Rejected("duplicate", f"packet {key} arrived twice")
        if self._last is not None and key < self._last:
            raise Rejected("late", f"packet {key} arrived after {self._last} was played")
        heapq.heappush(self._heap, (key, payload))
        self._held.add(key)
        out = []
        while len(self._heap) > self.depth:
            out.append(self._pop())
        return out

    def flush(self) -> list[tuple[int, bytes]]:
        return [self._pop() for _ in range(len(self._heap))]

    def _pop(self) -> tuple[int, bytes]:
        key, payload = heapq.heappop(self._heap)
        self._held.discard(key)
        self._released.append(key)
        self._last = key
        return key, payload


# --- Ogg pages -------------------------------------------------------------------------


class OggOpusPackets:
    """Ogg pages (one or more per payload, or a page split over payloads) -> Opus audio packets;
    the ``OpusHead`` and ``OpusTags`` header packets are checked and skipped."""

    def __init__(self) -> None:
        self._buffer = b""
        self._partial = b""
        self._headers = 0

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        packets: list[bytes] = []
        while len(self._buffer) >= 27:
            if self._buffer[:4] != b"OggS" or self._buffer[4] != 0:
                self._buffer = b""
                self._partial = b""
                raise Rejected("bad_ogg", "not an Ogg page (no OggS capture pattern)")
            count = self._buffer[26]
            if len(self._buffer) < 27 + count:
                break
            lacing = self._buffer[27 : 27 + count]
            size = 27 + count + sum(lacing)
            if len(self._buffer) < size:
                break
            body, self._buffer = self._buffer[27 + count : size], self._buffer[size:]
            at = 0
            for length in lacing:
                self._partial += body[at : at + length]
                at += length
                if length < 255:
                    packets.extend(self._packet(self._partial))
                    self._partial = b""
        return packets

    def _packet(self, packet: bytes) -> list[bytes]:
        if self._headers == 0:
            if not packet.startswith(b"OpusHead"):
                raise Rejected("bad_ogg", "the Ogg stream does not start with OpusHead")
            self._headers = 1
            return []
        if self._headers == 1 and packet.startswith(b"OpusTags"):
            self._headers = 2
            return []
        self._headers = 2
        return [packet]


# --- one tagged stream -----------------------------------------------------------------


def _opus_decoder() -> av.AudioCodecContext:
    decoder = av.CodecContext.create("opus", "r")
    assert isinstance(decoder, av.AudioCodecContext)
    decoder.sample_rate = OPUS_RATE
    decoder.layout = "stereo"
    return decoder


@dataclass
class TagStream:
    """One tag's packets -> ordered, decoded, 16 kHz audio with its audio time -> its speaker
    stream (in ``_BATCH_S`` pieces: the pipeline's cost is per push)."""

    tag: str
    participant: str
    ssrc: str | None
    ogg: bool
    stream: SpeakerStream | None = None
    refused_until: float = 0.0
    last_arrival: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self._order = Reorder()
        self._unwrap = Unwrapper()
        self._by_chunk: bool | None = None
        self._first: int | None = None
        self._arrivals = 0
        self._decoder = _opus_decoder()
        self._pcm = PcmConverter()
        self._ogg = OggOpusPackets() if self.ogg else None
        self._ogg_pts = 0
        self._pending: list[np.ndarray] = []
        self._pending_at = 0.0
        self._pending_size = 0
        self._quiet_filled = 0.0
        self._late = 0
        self._base_at = 0.0

    def attach(self, stream: SpeakerStream) -> None:
        self.stream = stream
        self._pcm.restart()
        self._base_at = 0.0
        self._pending, self._pending_size = [], 0

    def _key(self, packet: MediaPacket) -> int:
        """Position of the packet in 48 kHz units (RTP timestamp), chunk numbers else, arrival
        order when neither came; Ogg pages are ordered by chunk or arrival."""
        self._arrivals += 1
        if self._by_chunk is None:
            self._by_chunk = self.ogg or packet.timestamp is None
        if self._by_chunk:
            number = packet.chunk if packet.chunk is not None else self._arrivals
            step = 1 if self.ogg else OPUS_RATE // 50
        else:
            number = packet.timestamp if packet.timestamp is not None else 0
            step = 1
        position = self._unwrap(number) * step
        if self._first is None:
            self._first = position
        return position - self._first

    def receive(self, packet: MediaPacket) -> list[Rejected]:
        """Take a packet; returns what went wrong with it or with packets it released; raises
        :class:`Rejected` for the packet itself (a duplicate, a late one)."""
        self.last_arrival = time.monotonic()
        self._quiet_filled = 0.0
        try:
            released = self._order.add(self._key(packet), packet.payload)
        except Rejected as problem:
            self._late = self._late + 1 if problem.reason == "late" else 0
            if self._late < _RESYNC_AFTER:
                raise
            problems = self.flush()
            self._resync()
            released = self._order.add(self._key(packet), packet.payload)
            return problems + self._play(released)
        self._late = 0
        return self._play(released)

    def _resync(self) -> None:
        """The sender restarted its clock: later packets continue at the stream's end."""
        log.info(
            "tag %s: %d packets in a row from the past, following the new clock",
            self.tag,
            self._late,
        )
        self._order, self._unwrap = Reorder(), Unwrapper()
        self._first, self._arrivals, self._late = None, 0, 0
        self._pcm.restart()
        self._base_at = self.stream.audio_seconds if self.stream is not None else 0.0

    def fill_quiet(self, now: float) -> list[Rejected]:
        """Silence for a tag that stopped sending (see ``_QUIET_S``)."""
        quiet = now - self.last_arrival
        if self.stream is None or quiet < _QUIET_S:
            return []
        problems = self.flush()
        want = min(quiet - _QUIET_MARGIN_S, _QUIET_FILL_S)
        if want > self._quiet_filled and self.stream is not None:
            samples = round((want - self._quiet_filled) * SAMPLE_RATE)
            self._quiet_filled = want
            try:
                self.stream.push(np.zeros(samples, np.int16))
            except Exception as exc:
                log.warning("tag %s: silence after its stream closed: %s", self.tag, exc)
                self.stream = None
        return problems

    def flush(self) -> list[Rejected]:
        problems = self._play(self._order.flush())
        self._push()
        return problems

    @property
    def holding(self) -> bool:
        return len(self._order) > 0

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def _play(self, packets: list[tuple[int, bytes]]) -> list[Rejected]:
        problems = []
        for key, payload in packets:
            try:
                if self._ogg is not None:
                    for opus in self._ogg.feed(payload):
                        self._decode(opus, None)
                else:
                    self._decode(payload, key)
            except Rejected as problem:
                problems.append(problem)
        return problems

    def _decode(self, payload: bytes, pts: int | None) -> None:
        try:
            frames = self._decoder.decode(av.Packet(payload))
        except (av.FFmpegError, ValueError) as exc:
            self._decoder = _opus_decoder()
            raise Rejected("undecodable_opus", f"tag {self.tag!r}: {exc}") from None
        for frame in frames:
            if pts is None:
                frame.pts = self._ogg_pts
                self._ogg_pts += frame.samples
            else:
                frame.pts = pts
            frame.time_base = Fraction(1, OPUS_RATE)
            converted = self._pcm.convert(frame)
            if converted is not None and self.stream is not None:
                samples, at = converted
                self._collect(samples, self._base_at + at)

    def _collect(self, samples: np.ndarray, at: float) -> None:
        expected = self._pending_at + self._pending_size / SAMPLE_RATE
        if self._pending and abs(at - expected) > 0.005:
            self._push()
        if not self._pending:
            self._pending_at = at
        self._pending.append(samples)
        self._pending_size += samples.size
        if self._pending_size >= _BATCH_S * SAMPLE_RATE:
            self._push()

    def _push(self) -> None:
        if self._pending and self.stream is not None:
            samples = np.concatenate(self._pending)
            self._pending, self._pending_size = [], 0
            try:
                self.stream.push(samples, at=self._pending_at)
            except Exception as exc:  # closed under it (replaced, the call ending)
                log.warning("tag %s: audio after its stream closed: %s", self.tag, exc)
                self.stream = None


# --- the socket ------------------------------------------------------------------------


class JitsiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.rejected = Counter(
            "roomscribe_jitsi_rejected_messages",
            "Jitsi socket messages or packets dropped, by reason (the socket goes on)",
            ("reason",),
            registry=registry,
        )
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)


@dataclass(frozen=True)
class JitsiOptions:
    session_id: str
    send_back: bool
    send_back_interim: bool
    language: str | None
    ogg: bool

    @classmethod
    def parse(cls, params: Any) -> "JitsiOptions":
        session_id = (params.get("sessionId") or "").strip()
        if not session_id:
            raise Rejected("invalid_request", "the sessionId query parameter is required")
        encoding = params.get("encoding") or "opus"
        if encoding not in ("opus", "ogg-opus"):
            raise Rejected(
                "invalid_request", f"encoding {encoding!r} is not supported: opus or ogg-opus"
            )
        return cls(
            session_id,
            params.get("sendBack") == "true",
            params.get("sendBackInterim") == "true",
            spoken_language(params.get("lang")),
            encoding == "ogg-opus",
        )


@dataclass
class _Ending:
    reason: str
    close_code: int
    message: str = ""


class _Output:
    """One participant's caption frames as ``transcription-result`` messages for the socket."""

    def __init__(self, session: "JitsiSession", tag: TagStream) -> None:
        self.session = session
        self.tag = tag

    def emit(self, frame: AnyFrame) -> None:
        if not isinstance(frame, CaptionFrame):
            log.info("jitsi %s, tag %s: %s", self.session.options.session_id, self.tag.tag, frame)
            return
        interim = frame.type == "partial"
        options = self.session.options
        if (interim and not options.send_back_interim) or (not interim and not options.send_back):
            return
        if not frame.text.strip():
            return
        confidence = (
            round(sum(w.confidence for w in frame.words) / len(frame.words), 3)
            if frame.words
            else None
        )
        result = TranscriptionResult(
            is_interim=interim,
            transcript=[TranscriptAlternative(text=frame.text.strip(), confidence=confidence)],
            participant=ResultParticipant(
                id=self.tag.participant, tag=self.tag.tag, ssrc=self.tag.ssrc
            ),
            message_id=frame.segment_id,
            timestamp=round((self.session.wall_start + frame.start) * 1000),
            language=frame.language or self.session.language,
        )
        self.session.send(result.model_dump_json(exclude_none=True), droppable=interim)


class JitsiSession:
    """One accepted JVB socket: one call, one participant stream per tag."""

    def __init__(
        self,
        websocket: WebSocket,
        runtime: LiveRuntime,
        settings: Settings,
        metrics: JitsiMetrics,
        options: JitsiOptions,
        engine: Engine,
        language: str | None,
    ) -> None:
        self.websocket = websocket
        self.runtime = runtime
        self.settings = settings
        self.metrics = metrics
        self.options = options
        self.engine = engine
        self.language = language
        self.tags: dict[str, TagStream] = {}
        self.owners: dict[str, str] = {}  # participant -> the tag whose stream it is
        self.start_params: dict[str, dict[str, Any]] = {}
        self.rejected: dict[str, int] = {}
        self.replaced = asyncio.Event()
        self.connected = True
        self.wall_start = time.time()
        self.call: CallSession | None = None
        self._out: asyncio.Queue[str | None] = asyncio.Queue()
        self._dropped = 0
        self._ticked = time.monotonic()

    def send(self, text: str, droppable: bool = False) -> None:
        if droppable and self._out.qsize() >= _OUT_BACKLOG:
            self._dropped += 1
            return
        self._out.put_nowait(text)

    def reject(self, problem: Rejected, tag: str | None = None) -> None:
        self.rejected[problem.reason] = self.rejected.get(problem.reason, 0) + 1
        self.metrics.rejected.labels(problem.reason).inc()
        log.warning(
            "jitsi session %s%s: %s dropped: %s",
            self.options.session_id,
            f", tag {tag}" if tag else "",
            problem.reason,
            problem.message,
        )

    async def run(self) -> _Ending:
        limits = CallLimits(self.settings.limits.idle_timeout_s, self.settings.limits.max_stream_s)
        call = CallSession(self.runtime, self.options.session_id, limits)
        self.call = call
        self.wall_start = time.time()
        await call.start()
        writer = asyncio.create_task(self._write(), name=f"jitsi {call.room}: writer")
        ending = _Ending(EndReason.ENDED, CLOSE_NORMAL)
        try:
            ending = await self._read(call)
        finally:
            for tag in list(self.tags.values()):
                self._report(tag.flush(), tag.tag)
            await call.end(ending.reason)
            log.info(
                "jitsi session %s ended (%s): %d tags, rejected %s",
                self.options.session_id,
                ending.reason,
                len(self.tags),
                self.rejected or "nothing",
            )
            self._out.put_nowait(None)
            await writer
        return ending

    async def _write(self) -> None:
        try:
            while (text := await self._out.get()) is not None:
                if self.connected:
                    await self.websocket.send_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.connected = False
            while await self._out.get() is not None:
                pass

    async def _read(self, call: CallSession) -> _Ending:
        while True:
            if self.replaced.is_set():
                return _Ending("replaced", CLOSE_NORMAL, "a newer connection took this session")
            try:
                async with asyncio.timeout(min(_TICK_S, max(call.time_left(), 0.001))):
                    message = await self.websocket.receive()
            except TimeoutError:
                await self._tick()
                reason = call.expired()
                if reason is EndReason.MAX_DURATION:
                    return _Ending(reason, CLOSE_MAX_DURATION, "maximum duration reached")
                if reason is EndReason.IDLE:
                    return _Ending(reason, CLOSE_IDLE, "no messages within the idle timeout")
                continue
            if message["type"] == "websocket.disconnect":
                self.connected = False
                return _Ending(EndReason.ENDED, CLOSE_NORMAL)
            call.heard()
            text = message.get("text")
            if text is None:
                self.reject(Rejected("binary_frame", "binary frames are not part of the protocol"))
            else:
                await self._handle(call, text)
            if time.monotonic() - self._ticked >= _TICK_S:  # busy sockets never time out
                await self._tick()

    async def _handle(self, call: CallSession, text: str) -> None:
        try:
            message = parse_message(text)
            event = message.get("event")
            if event == "media":
                packet = parse_media(message)
                await self._media(call, packet)
            elif event == "ping":
                pong: dict[str, Any] = {"event": "pong"}
                if isinstance(message.get("id"), int | str):
                    pong["id"] = message["id"]
                self.send(json.dumps(pong))
            elif event == "start":
                self._start(message)
            elif event == "info":
                log.info("jitsi session %s: client info %s", self.options.session_id, text[:500])
            else:
                raise Rejected("unknown_event", f"unknown event {str(event)[:40]!r}")
        except Rejected as problem:
            self.reject(problem)

    def _start(self, message: dict[str, Any]) -> None:
        start = message.get("start")
        tag = start.get("tag") if isinstance(start, dict) else None
        if not isinstance(start, dict) or not isinstance(tag, str) or not tag:
            raise Rejected("invalid_media", "a start event without a tag")
        media_format = start.get("mediaFormat") or {}
        encoding = str(media_format.get("encoding", "opus")).lower() if media_format else "opus"
        if encoding not in ("opus", "ogg", "ogg-opus"):
            self.start_params[tag] = {"refused": True}
            raise Rejected(
                "unsupported_encoding", f"tag {tag!r}: encoding {encoding!r}, expected Opus"
            )
        custom = start.get("customParameters")
        endpoint = custom.get("endpointId") if isinstance(custom, dict) else None
        self.start_params[tag] = {
            "ogg": encoding != "opus" or self.options.ogg,
            "endpoint": endpoint if isinstance(endpoint, str) and endpoint else None,
        }

    async def _media(self, call: CallSession, packet: MediaPacket) -> None:
        started = self.start_params.get(packet.tag, {})
        if started.get("refused"):  # counted once, at its start event
            return
        tag = self.tags.get(packet.tag)
        if tag is None:
            endpoint, ssrc = participant_of(packet.tag)
            tag = TagStream(
                packet.tag,
                started.get("endpoint") or endpoint,
                ssrc,
                bool(started.get("ogg", self.options.ogg)),
            )
            self.tags[packet.tag] = tag
        stale = tag.stream is None or self.owners.get(tag.participant) != tag.tag
        if stale and not await self._open(call, tag):
            return
        for problem in tag.receive(packet):
            self.reject(problem, tag.tag)

    async def _open(self, call: CallSession, tag: TagStream) -> bool:
        if time.monotonic() < tag.refused_until:  # refused (and counted) once per retry period
            return False
        previous = self.tags.get(self.owners.get(tag.participant, ""))
        if previous is not None and previous is not tag:
            self._report(previous.flush(), previous.tag)
            previous.stream = None
        try:
            stream = await call.admit(
                tag.participant,
                None,
                self.language,
                StreamKind.JITSI,
                frames=_Output(self, tag),
                engine=self.engine,
            )
        except CapacityError as exc:
            tag.refused_until = time.monotonic() + self.settings.limits.retry_after_s
            raise Rejected("capacity", f"tag {tag.tag!r}: {exc.message}") from None
        except CallEndedError:
            return False
        self.owners[tag.participant] = tag.tag
        tag.attach(stream)
        return True

    async def _tick(self) -> None:
        """Tags that went quiet hand over what their reorder buffer and batch hold."""
        now = self._ticked = time.monotonic()
        for tag in self.tags.values():
            if now - tag.last_arrival >= _QUIET_S:
                self._report(tag.fill_quiet(now), tag.tag)
            elif now - tag.last_arrival >= _HELD_S and (tag.holding or tag.pending):
                self._report(tag.flush(), tag.tag)

    def _report(self, problems: list[Rejected], tag: str) -> None:
        for problem in problems:
            self.reject(problem, tag)


def jitsi_router(
    runtime: LiveRuntime,
    settings: Settings,
    metrics: ApiMetrics | None = None,
    sessions: dict[str, JitsiSession] | None = None,
) -> APIRouter:
    """``WS /transcribe`` (the module docstring has the protocol); ``sessions``: where the
    open sessions are kept, by ``sessionId`` (for a caller that watches them)."""
    router = APIRouter(tags=["jitsi"])
    registry = metrics.registry if metrics is not None else CollectorRegistry()
    counters = JitsiMetrics(registry)
    tokens = ListenTokens(settings.api.api_keys, settings.limits.listen_token_ttl_s)
    active: dict[str, JitsiSession] = {} if sessions is None else sessions

    async def close(websocket: WebSocket, code: int, reason: str) -> None:
        if websocket.application_state != WebSocketState.DISCONNECTED:
            with contextlib.suppress(RuntimeError, OSError):
                await websocket.close(code, reason[:120])

    @router.websocket("/transcribe")
    async def transcribe(websocket: WebSocket) -> None:
        await websocket.accept()
        if not tokens.authorized(websocket):
            if metrics is not None:
                metrics.auth_failures.labels("websocket").inc()
            await close(websocket, CLOSE_UNAUTHORIZED, "missing or unknown API key or token")
            return
        try:
            options = JitsiOptions.parse(websocket.query_params)
        except Rejected as problem:
            await close(websocket, CLOSE_POLICY, problem.message)
            return
        try:
            engine, language = await runtime.engine_for(options.language)
        except (UnsupportedLanguageError, ModelNotFoundError) as exc:
            await close(websocket, CLOSE_UNSUPPORTED, str(exc))
            return
        session = JitsiSession(websocket, runtime, settings, counters, options, engine, language)
        previous = active.get(options.session_id)
        if previous is not None:
            log.info("jitsi session %s: a new connection takes over", options.session_id)
            previous.replaced.set()
        active[options.session_id] = session
        try:
            ending = await session.run()
        except Exception:
            log.exception("jitsi session %s failed", options.session_id)
            ending = _Ending("failed", 1011, "the session failed on the server")
        finally:
            if active.get(options.session_id) is session:
                del active[options.session_id]
        if session.connected:
            await close(websocket, ending.close_code, ending.message)

    return router
