"""``roomscribe.STT``: LiveKit Agents speech-to-text backed by a self-hosted roomscribe server.

Both ``stream()`` and ``recognize()`` use roomscribe's ``WS /v1/listen``. ``recognize()``
sends the whole buffer over one listen session rather than submitting a batch job
(``POST /v1/transcripts``): a batch job is queued for a worker and polled, which costs seconds
an agent's turn cannot spare, and needs a worker running; a listen session answers as soon
as the live model has decoded the buffer, with the same words, times and confidences as the
stream, over the same authentication.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import aiohttp
import numpy as np
from livekit import rtc
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectionError,
    APIConnectOptions,
    APIStatusError,
    APITimeoutError,
    NotGivenOr,
    stt,
    utils,
)
from livekit.agents.utils import AudioBuffer, is_given

from .listen import (
    END_MESSAGE,
    SAMPLE_RATE,
    Caption,
    auth_headers,
    closed_early,
    informs,
    joined,
    listen_url,
    refusal,
    start_message,
)
from .log import logger

_MAX_DURATION = "MAX_DURATION_REACHED"

if TYPE_CHECKING:
    Socket: TypeAlias = aiohttp.ClientWebSocketResponse[Literal[True]]
else:  # aiohttp before 3.12 has no type parameters here
    Socket = aiohttp.ClientWebSocketResponse


@dataclass
class STTOptions:
    language: str | None
    interim_results: bool
    room: str | None
    participant: str | None
    name: str | None


class Pcm16k:
    """LiveKit frames of any sample rate and channel count -> 16 kHz mono s16le bytes."""

    def __init__(self) -> None:
        self._resampler: rtc.AudioResampler | None = None
        self._rate = 0

    def convert(self, frame: rtc.AudioFrame) -> bytes:
        samples = np.frombuffer(frame.data, dtype=np.int16)
        if frame.num_channels > 1:
            mixed = samples.reshape(-1, frame.num_channels).mean(axis=1)
            samples = np.round(mixed).astype(np.int16)
        if frame.sample_rate == SAMPLE_RATE:
            return samples.tobytes()
        if self._resampler is None or self._rate != frame.sample_rate:
            self._resampler = rtc.AudioResampler(frame.sample_rate, SAMPLE_RATE, num_channels=1)
            self._rate = frame.sample_rate
        mono = rtc.AudioFrame(samples.tobytes(), frame.sample_rate, 1, samples.size)
        return b"".join(bytes(out.data) for out in self._resampler.push(mono))

    def flush(self) -> bytes:
        if self._resampler is None:
            return b""
        return b"".join(bytes(out.data) for out in self._resampler.flush())


class STT(stt.STT[Literal["metrics_collected", "error"]]):
    def __init__(
        self,
        *,
        base_url: str = "http://localhost:8080",
        api_key: str | None = None,
        language: str | None = "en",
        interim_results: bool = True,
        room: str | None = None,
        participant: str | None = None,
        name: str | None = None,
        http_session: aiohttp.ClientSession | None = None,
    ) -> None:
        """Speech-to-text over a roomscribe server's ``WS /v1/listen``.

        Args:
            base_url: the roomscribe API, e.g. ``http://roomscribe:8080``.
            api_key: one of the server's ``api.api_keys`` (sent as a bearer token);
                default ``$ROOMSCRIBE_API_KEY``; none when the server has no keys.
            language: ``en``, another code, ``auto`` (detect per utterance) or None (the
                server's ``live.language``).
            interim_results: ask for partials (``INTERIM_TRANSCRIPT`` events).
            room, participant, name: where the server publishes the captions on NATS and
                files the call (default: a fresh session id per stream). A participant id
                streams once at a time in a room.
            http_session: an ``aiohttp`` session to use (default: the agent job's own, or
                one this STT opens and closes).
        """
        super().__init__(
            capabilities=stt.STTCapabilities(
                streaming=True,
                interim_results=interim_results,
                aligned_transcript="word",
                offline_recognize=True,
            )
        )
        self._url = listen_url(base_url)
        self._api_key = api_key or os.environ.get("ROOMSCRIBE_API_KEY") or None
        self._opts = STTOptions(language, interim_results, room, participant, name)
        self._session = http_session
        self._own_session: aiohttp.ClientSession | None = None
        self._model = "unknown"

    @property
    def model(self) -> str:
        """The server's live model, once a frame has named it."""
        return self._model

    @property
    def provider(self) -> str:
        return "roomscribe"

    def _http(self) -> aiohttp.ClientSession:
        if self._session is not None:
            return self._session
        try:
            return utils.http_context.http_session()
        except RuntimeError:  # outside an agent job: a session of our own
            if self._own_session is None or self._own_session.closed:
                self._own_session = aiohttp.ClientSession()
            return self._own_session

    async def connect(
        self, conn_options: APIConnectOptions, opts: STTOptions
    ) -> tuple[Socket, dict[str, Any]]:
        """A listen session past its ``ready``; a refusal raises its ``APIError``."""
        try:
            ws = await asyncio.wait_for(
                self._http().ws_connect(self._url, headers=auth_headers(self._api_key)),
                conn_options.timeout,
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise APIStatusError(
                f"roomscribe refused the WebSocket at {self._url}: {exc.message}",
                status_code=exc.status,
            ) from exc
        except asyncio.TimeoutError as exc:
            raise APITimeoutError(f"no answer from roomscribe at {self._url}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise APIConnectionError(f"cannot reach roomscribe at {self._url}") from exc
        try:
            await ws.send_str(
                start_message(
                    language=opts.language,
                    interim_results=opts.interim_results,
                    room=opts.room,
                    participant=opts.participant,
                    name=opts.name,
                )
            )
            message = await asyncio.wait_for(ws.receive(), conn_options.timeout)
            frame = _json(message)
            if frame is None:
                raise closed_early(ws.close_code)
            if frame.get("type") == "error":
                raise refusal(frame)
            if frame.get("type") != "ready":
                raise APIConnectionError(f"roomscribe answered {frame.get('type')!r}, not ready")
            return ws, frame
        except asyncio.TimeoutError as exc:
            await ws.close()
            raise APITimeoutError("roomscribe did not answer the start message") from exc
        except (aiohttp.ClientError, OSError) as exc:
            await ws.close()
            raise APIConnectionError("roomscribe went away while the stream started") from exc
        except BaseException:
            await ws.close()
            raise

    def _options(self, language: NotGivenOr[str]) -> STTOptions:
        return replace(self._opts, language=language) if is_given(language) else self._opts

    def saw(self, caption: Caption) -> None:
        if caption.model:
            self._model = caption.model

    async def _recognize_impl(
        self,
        buffer: AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        frame = rtc.combine_audio_frames(buffer)
        pcm = Pcm16k()
        audio = pcm.convert(frame) + pcm.flush()
        # its own call in the room: the participant id may be streaming at the same time
        opts = replace(self._options(language), interim_results=False, participant=None)
        ws, ready = await self.connect(conn_options, opts)
        finals: list[Caption] = []
        try:
            # the live model decodes faster than real time; the slack covers a busy server
            await asyncio.wait_for(
                self._recognize_session(ws, audio, finals),
                conn_options.timeout + 2 * frame.duration,
            )
        except asyncio.TimeoutError as exc:
            raise APITimeoutError("roomscribe did not finish recognizing the buffer") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise APIConnectionError("roomscribe went away during recognition") from exc
        finally:
            await ws.close()
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            request_id=str(ready.get("session_id", "")),
            alternatives=[joined(finals, 0.0, opts.language)],
        )

    async def _recognize_session(self, ws: Socket, audio: bytes, finals: list[Caption]) -> None:
        step = SAMPLE_RATE * 2  # one second of s16le per message
        for begin in range(0, len(audio), step):
            await ws.send_bytes(audio[begin : begin + step])
        await ws.send_str(END_MESSAGE)
        while True:
            message = await ws.receive()
            frame = _json(message)
            if frame is None:
                raise closed_early(ws.close_code)
            kind = frame.get("type")
            if kind == "final":
                caption = Caption.parse(frame)
                self.saw(caption)
                finals.append(caption)
            elif kind == "completed":
                return
            elif kind == "error" and not informs(frame) and frame.get("code") != _MAX_DURATION:
                raise refusal(frame)

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> SpeechStream:
        return SpeechStream(stt=self, opts=self._options(language), conn_options=conn_options)

    async def aclose(self) -> None:
        if self._own_session is not None:
            await self._own_session.close()
            self._own_session = None


def _json(message: aiohttp.WSMessage) -> dict[str, Any] | None:
    """A text message as a JSON object; None for a close (or an error) of the socket."""
    if message.type == aiohttp.WSMsgType.TEXT:
        try:
            value = json.loads(message.data)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise APIConnectionError(f"roomscribe sent a non-object message: {message.data!r}")
        return value
    if message.type in (
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSMsgType.CLOSING,
        aiohttp.WSMsgType.CLOSED,
        aiohttp.WSMsgType.ERROR,
    ):
        return None
    raise APIConnectionError(f"roomscribe sent an unexpected {message.type.name} message")


class SpeechStream(stt.RecognizeStream):
    """One participant's audio as a chain of listen sessions.

    Events per utterance: ``START_OF_SPEECH`` with its first words, ``INTERIM_TRANSCRIPT``\\s
    (the server's partials), one ``FINAL_TRANSCRIPT``, ``END_OF_SPEECH``; an utterance that
    turns out to be noise (an empty final) ends without a final. ``RECOGNITION_USAGE``
    follows each final with the audio sent since the last one. A session that the server ends
    at its maximum duration is followed by a new one at once, one ended for silence by a new
    one when audio comes again; event times stay stream time across them.

    ``flush()`` sends what is buffered; roomscribe cuts utterances itself (its VAD), so the
    capabilities do not claim ``manual_flush``.
    """

    def __init__(self, *, stt: STT, opts: STTOptions, conn_options: APIConnectOptions) -> None:
        super().__init__(stt=stt, conn_options=conn_options)
        self._owner = stt
        self._opts = opts
        self._pcm = Pcm16k()
        self._flushed = False
        self._open: set[str] = set()
        self._speaking = False
        self._unreported_s = 0.0
        self._request_id = ""
        self._carry = b""  # audio for the next session
        self._at_limit = False
        self._session_s = 0.0

    async def _run(self) -> None:
        earlier_s = 0.0  # audio sent in the earlier sessions of this connection attempt
        while True:
            ws, ready = await self._owner.connect(self._conn_options, self._opts)
            self._request_id = str(ready.get("session_id", ""))
            self._session_s = 0.0
            self._at_limit = False
            limit_s = float(ready.get("max_duration_seconds") or "inf")
            try:
                reason = await self._session(ws, earlier_s, limit_s)
            finally:
                await ws.close()
                self._end_of_speech()
                self._report_usage()
            if reason == "end":
                return
            earlier_s += self._session_s
            logger.info(
                "roomscribe ended the listen session (%s) after %.1f s; opening another",
                reason,
                self._session_s,
            )
            if reason != "max_duration" and not self._carry:
                first = await self._next_audio()
                if first is None:
                    return
                self._carry = self._pcm.convert(first)

    async def _next_audio(self) -> rtc.AudioFrame | None:
        async for item in self._input_ch:
            if isinstance(item, rtc.AudioFrame):
                return item
        return None

    async def _session(self, ws: Socket, earlier_s: float, limit_s: float) -> str:
        """Stream until the server completes the session; returns its reason."""
        receiver = asyncio.create_task(self._receive(ws, earlier_s), name="roomscribe receive")
        sender = asyncio.create_task(self._send(ws, limit_s), name="roomscribe send")
        try:
            done, _ = await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
            if sender in done:
                sender.result()
            return await receiver
        finally:
            await utils.aio.cancel_and_wait(sender, receiver)

    async def _send(self, ws: Socket, limit_s: float) -> None:
        """Audio up to the session's maximum duration, then ``end`` once the input has ended.
        Audio past the limit (or after the server said it reached it) waits for the next
        session, so a chain of sessions loses nothing."""
        room = 2 * int(limit_s * SAMPLE_RATE) if limit_s != float("inf") else -1
        try:
            carried, self._carry = self._carry, b""
            room = await self._send_audio(ws, carried, room)
            async for item in self._input_ch:
                if isinstance(item, rtc.AudioFrame):
                    room = await self._send_audio(ws, self._pcm.convert(item), room)
            if not self._flushed:
                self._flushed = True
                room = await self._send_audio(ws, self._pcm.flush(), room)
            if not self._carry and not self._at_limit:
                await ws.send_str(END_MESSAGE)
        except (aiohttp.ClientError, ConnectionError):
            return  # the receiver sees the socket go and says why

    async def _send_audio(self, ws: Socket, data: bytes, room: int) -> int:
        """Sends what fits in ``room`` bytes (-1: no limit); returns the room left."""
        if self._carry or self._at_limit:
            self._carry += data
            return room
        if room >= 0 and len(data) >= room:
            data, self._carry = data[:room], data[room:]
        if data:
            await ws.send_bytes(data)
            self._unreported_s += len(data) / (2 * SAMPLE_RATE)
            self._session_s += len(data) / (2 * SAMPLE_RATE)
        return room - len(data) if room >= 0 else room

    async def _receive(self, ws: Socket, earlier_s: float) -> str:
        while True:
            frame = _json(await ws.receive())
            if frame is None:
                raise closed_early(ws.close_code)
            kind = frame.get("type")
            if kind in ("partial", "final"):
                self._caption(Caption.parse(frame), self.start_time_offset + earlier_s)
            elif kind == "completed":
                return str(frame.get("reason"))
            elif kind == "error":
                if frame.get("code") == _MAX_DURATION:
                    self._at_limit = True  # its last finals and completed follow
                    logger.info("roomscribe: %s", frame.get("message"))
                elif informs(frame):
                    logger.warning("roomscribe: %s: %s", frame.get("code"), frame.get("message"))
                else:
                    raise refusal(frame)

    def _send_event(self, kind: stt.SpeechEventType, data: stt.SpeechData | None = None) -> None:
        self._event_ch.send_nowait(
            stt.SpeechEvent(
                type=kind,
                request_id=self._request_id,
                alternatives=[data] if data is not None else [],
            )
        )

    def _caption(self, caption: Caption, offset: float) -> None:
        self._owner.saw(caption)
        data = caption.speech_data(offset, self._opts.language)
        if not caption.final:
            if not caption.text:
                return
            self._open.add(caption.segment_id)
            if not self._speaking:
                self._speaking = True
                self._send_event(stt.SpeechEventType.START_OF_SPEECH)
            self._send_event(stt.SpeechEventType.INTERIM_TRANSCRIPT, data)
            return
        self._open.discard(caption.segment_id)
        if caption.text:
            if not self._speaking:
                self._speaking = True
                self._send_event(stt.SpeechEventType.START_OF_SPEECH)
            self._send_event(stt.SpeechEventType.FINAL_TRANSCRIPT, data)
            self._report_usage()
        if not self._open:
            self._end_of_speech()

    def _end_of_speech(self) -> None:
        self._open.clear()
        if self._speaking:
            self._speaking = False
            self._send_event(stt.SpeechEventType.END_OF_SPEECH)

    def _report_usage(self) -> None:
        if self._unreported_s > 0:
            self._event_ch.send_nowait(
                stt.SpeechEvent(
                    type=stt.SpeechEventType.RECOGNITION_USAGE,
                    request_id=self._request_id,
                    recognition_usage=stt.RecognitionUsage(audio_duration=self._unreported_s),
                )
            )
            self._unreported_s = 0.0
