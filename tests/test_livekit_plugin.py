"""The LiveKit Agents plugin (``integrations/livekit``) against a real roomscribe service:
its own ``stt.stream()`` and ``recognize()`` fed LibriVox speech as ``rtc.AudioFrame``\\s,
WER beside the plain model on the same audio, the event contract, and its errors."""

import asyncio
import json
import re
from contextlib import AsyncExitStack
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("livekit.agents", reason="livekit-agents is not installed")
roomscribe = pytest.importorskip(
    "livekit.plugins.roomscribe",
    reason="the plugin is not installed (pip install -e integrations/livekit --no-deps)",
)

import aiohttp  # noqa: E402
from faster_whisper import WhisperModel  # noqa: E402
from livekit import rtc  # noqa: E402
from livekit.agents import APIConnectionError, APIConnectOptions, APIStatusError, stt  # noqa: E402
from nats.aio.msg import Msg  # noqa: E402

from bench.accuracy import plain  # noqa: E402
from bench.devsets import librivox  # noqa: E402
from bench.scoring import wer  # noqa: E402
from config import load_settings  # noqa: E402
from engines.models import resolve  # noqa: E402
from protocol import CaptionFrame, parse_frame  # noqa: E402
from tests.listen_helpers import listen_server, to_48k_stereo  # noqa: E402

Pcm16k = roomscribe.stt.Pcm16k
Kind = stt.SpeechEventType
GAP_S = 1.0
# how much worse than the plain model a live pass may be: a lost sentence costs more
SLACK = 0.10
QUICK = APIConnectOptions(max_retry=1, retry_interval=0.1, timeout=5.0)


@cache
def plain_model() -> WhisperModel:
    path = resolve("whisper-tiny.en", load_settings().data_dir).path
    return WhisperModel(str(path), device="cpu", compute_type="int8")


def plain_text(audio: np.ndarray) -> str:
    return plain(plain_model(), audio)[0]


def reading(count: int | None = None) -> tuple[np.ndarray, str, list[tuple[float, float]]]:
    """LibriVox utterances, each followed by a second of silence: 16 kHz int16, the words,
    and each utterance's span."""
    parts, spans, at = [], [], 0.0
    clips = librivox()[:count]
    for clip in clips:
        spans.append((at, at + clip.samples.size / 16000))
        parts += [clip.samples, np.zeros(int(GAP_S * 16000), np.int16)]
        at = spans[-1][1] + GAP_S
    return np.concatenate(parts), " ".join(c.text for c in clips), spans


def frames_of(pcm: bytes, rate: int, channels: int, ms: int) -> list[rtc.AudioFrame]:
    per_frame = rate * ms // 1000
    step = per_frame * channels * 2
    return [
        rtc.AudioFrame(
            pcm[at : at + step], rate, channels, len(pcm[at : at + step]) // (2 * channels)
        )
        for at in range(0, len(pcm), step)
    ]


async def push_paced(stream: Any, frames: list[rtc.AudioFrame], speed: float) -> None:
    """Push frames on a clock running ``speed`` times real time."""
    loop = asyncio.get_running_loop()
    began, audio_s = loop.time(), 0.0
    for frame in frames:
        stream.push_frame(frame)
        audio_s += frame.duration
        await asyncio.sleep(max(0.0, began + audio_s / speed - loop.time()))


async def collect(stream: Any) -> list[stt.SpeechEvent]:
    return [event async for event in stream]


def letters(events: list[stt.SpeechEvent]) -> str:
    codes = {Kind.START_OF_SPEECH: "S", Kind.INTERIM_TRANSCRIPT: "I", Kind.FINAL_TRANSCRIPT: "F"}
    codes[Kind.END_OF_SPEECH] = "E"
    return "".join(codes[e.type] for e in events if e.type in codes)


async def test_stream_events_follow_the_contract_and_keep_the_words(
    nats_url: str, tmp_path: Path
) -> None:
    audio, reference, spans = reading()
    duration = audio.size / 16000
    frames = frames_of(to_48k_stereo(audio), 48000, 2, 10)
    async with (
        listen_server(nats_url, tmp_path) as server,
        aiohttp.ClientSession() as http,
    ):
        on_nats: list[CaptionFrame] = []

        async def nats_frame(msg: Msg) -> None:
            frame = parse_frame(msg.data)
            assert isinstance(frame, CaptionFrame)
            on_nats.append(frame)

        await server.nc.subscribe(server.runtime.subjects.room_captions("lk-room"), cb=nats_frame)
        plugin = roomscribe.STT(
            base_url=server.http_url, room="lk-room", participant="lk-user", http_session=http
        )
        stream = plugin.stream()
        events_task = asyncio.create_task(collect(stream))
        await push_paced(stream, frames, speed=2.0)
        stream.flush()
        stream.end_input()
        events = await asyncio.wait_for(events_task, 120)
        await stream.aclose()
        await server.nc.flush()
        await asyncio.sleep(0.3)

    order = letters(events)
    # per utterance: start, interims, the final, end; an utterance that was noise has no final
    assert re.fullmatch(r"(SI*F?E)+", order), order
    assert "I" in order and order.count("F") >= len(spans) - 1, order
    finals = [e.alternatives[0] for e in events if e.type == Kind.FINAL_TRANSCRIPT]
    interims = [e.alternatives[0] for e in events if e.type == Kind.INTERIM_TRANSCRIPT]
    hypothesis = " ".join(f.text for f in finals)
    ours, theirs = wer(reference, hypothesis), wer(reference, plain_text(audio))
    assert ours <= theirs + SLACK, (ours, theirs, hypothesis)
    assert ours <= 0.1, hypothesis

    last_end = 0.0
    for final in finals:
        assert final.language == "en"
        assert 0.0 < final.confidence <= 1.0
        assert final.words and " ".join(final.words) == final.text
        assert final.start_time >= last_end - 0.05 and final.end_time > final.start_time
        assert any(s - 0.5 < final.end_time and final.start_time < e + 0.5 for s, e in spans)
        for word in final.words:
            assert final.start_time - 0.01 <= word.start_time <= word.end_time
            assert word.end_time <= final.end_time + 0.01
        last_end = final.end_time
    assert finals[-1].end_time <= duration + 0.05
    assert interims and all(i.text and i.language == "en" for i in interims)
    assert all(e.request_id for e in events)

    usage = sum(
        e.recognition_usage.audio_duration
        for e in events
        if e.type == Kind.RECOGNITION_USAGE and e.recognition_usage is not None
    )
    assert abs(usage - duration) < 0.05, usage
    assert plugin.model == "whisper-tiny.en" and plugin.provider == "roomscribe"
    # the stream is a call of the room like any other: its finals are on NATS
    assert [f.text.strip() for f in on_nats if f.type == "final" and f.text.strip()] == [
        f.text for f in finals
    ]
    assert {f.participant for f in on_nats} == {"lk-user"}


async def test_sessions_the_server_ends_at_its_limit_continue_on_the_same_timeline(
    nats_url: str, tmp_path: Path
) -> None:
    # utterances at 0-7.1, 8.1-11.1 and 12.1-17.4 s; sessions end at 8 s and at 16 s
    audio, _, spans = reading(3)
    frames = frames_of(audio.tobytes(), 16000, 1, 20)
    async with (
        listen_server(nats_url, tmp_path, limits={"max_stream_s": 8.0}) as server,
        aiohttp.ClientSession() as http,
    ):
        stream = roomscribe.STT(base_url=server.http_url, http_session=http).stream()
        events_task = asyncio.create_task(collect(stream))
        await push_paced(stream, frames, speed=2.0)
        stream.end_input()
        events = await asyncio.wait_for(events_task, 120)
        await stream.aclose()

    assert re.fullmatch(r"(SI*F?E)+", letters(events)), letters(events)
    finals = [e for e in events if e.type == Kind.FINAL_TRANSCRIPT]
    assert len({e.request_id for e in events}) == 3  # 0-8 s, 8-16 s, 16 s to the end
    # nothing lost at the cuts, and each final lies on its utterance in the input's time
    heard = [e.alternatives[0] for e in finals]
    for (begin, end), said in zip(spans, ("dashwood", "young man", "selfish"), strict=True):
        inside = [h for h in heard if begin - 0.5 < h.start_time < h.end_time < end + 0.5]
        assert said in " ".join(h.text for h in inside).lower(), (begin, end, heard)
    assert all(any(b - 0.5 < h.start_time < e + 0.5 for b, e in spans) for h in heard), heard


async def test_after_a_session_ended_for_silence_the_next_audio_opens_another(
    nats_url: str, tmp_path: Path
) -> None:
    first, second = librivox()[1], librivox()[4]
    pause = np.zeros(8000, np.int16)
    async with (
        listen_server(nats_url, tmp_path, limits={"idle_timeout_s": 1.5}) as server,
        aiohttp.ClientSession() as http,
    ):
        stream = roomscribe.STT(base_url=server.http_url, http_session=http).stream()
        events_task = asyncio.create_task(collect(stream))
        for clip in (first, second):
            audio = np.concatenate([clip.samples, pause])
            await push_paced(stream, frames_of(audio.tobytes(), 16000, 1, 20), speed=2.0)
            await asyncio.sleep(3.0)  # no frames: the server ends the session as idle
        stream.end_input()
        events = await asyncio.wait_for(events_task, 60)
        await stream.aclose()

    assert re.fullmatch(r"(SI*F?E)+", letters(events)), letters(events)
    finals = [e for e in events if e.type == Kind.FINAL_TRANSCRIPT]
    assert len({e.request_id for e in finals}) == 2
    said = " ".join(e.alternatives[0].text for e in finals).lower()
    assert "young man" in said and "amiable himself" in said, said
    # times are audio time: the second clip starts where the first clip's audio ended
    offset = (first.samples.size + pause.size) / 16000
    later = [e.alternatives[0] for e in finals if "amiable" in e.alternatives[0].text.lower()]
    assert offset - 0.1 < later[0].start_time < later[-1].end_time < offset + 3.4, later


async def test_recognize_with_an_api_key_and_refusals_without(
    nats_url: str, tmp_path: Path
) -> None:
    clip = librivox()[0]
    frames = frames_of(clip.samples.tobytes(), 16000, 1, 20)
    async with (
        listen_server(nats_url, tmp_path, api={"api_keys": ["lk-secret"]}) as server,
        aiohttp.ClientSession() as http,
    ):
        plugin = roomscribe.STT(base_url=server.http_url, api_key="lk-secret", http_session=http)
        event = await plugin.recognize(frames)
        assert event.type == Kind.FINAL_TRANSCRIPT and event.request_id
        heard = event.alternatives[0]
        ours, theirs = wer(clip.text, heard.text), wer(clip.text, plain_text(clip.samples))
        assert ours <= theirs + SLACK, (ours, theirs, heard.text)
        assert heard.language == "en" and 0.0 < heard.confidence <= 1.0
        assert 0.0 <= heard.start_time < heard.end_time <= clip.samples.size / 16000 + 0.05

        for key in ("wrong", None):
            refused = roomscribe.STT(base_url=server.http_url, api_key=key, http_session=http)
            with pytest.raises(APIStatusError) as caught:
                await refused.recognize(frames, conn_options=QUICK)
            assert caught.value.status_code == 401 and not caught.value.retryable
            assert "UNAUTHORIZED" in caught.value.message

            stream = refused.stream(conn_options=QUICK)
            stream.push_frame(frames[0])
            with pytest.raises(APIStatusError) as caught:
                await asyncio.wait_for(collect(stream), 30)
            assert caught.value.status_code == 401 and not caught.value.retryable
            await stream.aclose()


async def test_a_language_the_server_does_not_know_is_a_clear_error(
    nats_url: str, tmp_path: Path
) -> None:
    async with listen_server(nats_url, tmp_path) as server, aiohttp.ClientSession() as http:
        plugin = roomscribe.STT(base_url=server.http_url, language="xx", http_session=http)
        stream = plugin.stream(conn_options=QUICK)
        with pytest.raises(APIStatusError) as caught:
            await asyncio.wait_for(collect(stream), 30)
        assert caught.value.status_code == 400 and not caught.value.retryable
        assert "xx" in caught.value.message
        await stream.aclose()
        # a language given per stream overrides the STT's
        event = await plugin.recognize(
            frames_of(librivox()[1].samples.tobytes(), 16000, 1, 20), language="en"
        )
        assert "disposed" in event.alternatives[0].text.lower()


async def test_a_full_server_is_a_retryable_error(nats_url: str, tmp_path: Path) -> None:
    frames = frames_of(librivox()[1].samples.tobytes(), 16000, 1, 20)
    async with (
        listen_server(nats_url, tmp_path, limits={"max_streams": 1}) as server,
        aiohttp.ClientSession() as http,
    ):
        plugin = roomscribe.STT(base_url=server.http_url, participant="p", http_session=http)
        first = plugin.stream()
        first.push_frame(frames[0])
        await asyncio.sleep(1.0)  # its session holds the one slot
        with pytest.raises(APIStatusError) as caught:
            await plugin.recognize(frames, conn_options=APIConnectOptions(max_retry=0))
        assert caught.value.status_code == 503 and caught.value.retryable
        assert "CAPACITY" in caught.value.message
        await first.aclose()


async def test_the_server_going_away_ends_the_stream_with_a_connection_error(
    nats_url: str, tmp_path: Path
) -> None:
    clip = librivox()[0]
    frames = frames_of(clip.samples.tobytes(), 16000, 1, 20)
    async with AsyncExitStack() as stack, aiohttp.ClientSession() as http:
        server = await stack.enter_async_context(listen_server(nats_url, tmp_path))
        plugin = roomscribe.STT(base_url=server.http_url, http_session=http)
        stream = plugin.stream(conn_options=QUICK)
        events: list[stt.SpeechEvent] = []

        async def read() -> None:
            async for event in stream:
                events.append(event)

        reader = asyncio.create_task(read())
        await push_paced(stream, frames, speed=4.0)
        await stack.aclose()  # the service shuts down with the stream open
        with pytest.raises(APIConnectionError) as caught:
            await asyncio.wait_for(reader, 60)
        # the dropped session was retried once against a server that is gone
        assert "cannot reach roomscribe" in str(caught.value.__cause__)
        assert "ConnectionRefusedError" in str(caught.value)
        # the utterance cut off by the drop is still closed
        assert re.fullmatch(r"(SI*F?E)+", letters(events)), letters(events)
        await stream.aclose()

        # nothing listens there any more: recognize says so too
        with pytest.raises(APIConnectionError):
            await plugin.recognize(frames, conn_options=APIConnectOptions(max_retry=0))


def test_frames_of_any_rate_and_channels_become_16k_mono() -> None:
    seconds, rate, channels = 1.0, 44100, 6
    t = np.arange(int(seconds * rate)) / rate
    tone = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    interleaved = np.repeat(tone, channels).tobytes()
    pcm = Pcm16k()
    out = b"".join(pcm.convert(f) for f in frames_of(interleaved, rate, channels, 10))
    out += pcm.flush()
    samples = np.frombuffer(out, np.int16)
    assert abs(samples.size - 16000) <= 16, samples.size
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float32)))
    assert abs(np.argmax(spectrum) * 16000 / samples.size - 440) < 5
    assert 7000 < np.abs(samples[2000:-2000]).max() < 8200

    mono16k = np.arange(320, dtype=np.int16).tobytes()
    assert Pcm16k().convert(rtc.AudioFrame(mono16k, 16000, 1, 320)) == mono16k


def test_wire_messages() -> None:
    listen = roomscribe.listen
    assert listen.listen_url("http://host:8080") == "ws://host:8080/v1/listen"
    assert listen.listen_url("https://h/api/") == "wss://h/api/v1/listen"
    assert listen.listen_url("wss://h/v1/listen") == "wss://h/v1/listen"
    for bad in ("ftp://host", "host:8080", "http://"):
        with pytest.raises(ValueError, match="base_url"):
            roomscribe.STT(base_url=bad)
    start = json.loads(listen.start_message(language=None, interim_results=False, room="r"))
    assert start == {
        "type": "start",
        "sample_rate": 16000,
        "channels": 1,
        "encoding": "pcm_s16le",
        "interim_results": False,
        "room": "r",
    }
    capacity = listen.refusal({"type": "error", "code": "CAPACITY", "message": "busy"})
    assert isinstance(capacity, APIStatusError) and capacity.retryable
    assert capacity.status_code == 503
    assert listen.informs({"type": "error", "code": "STREAM_OVERLOADED", "participant": "p"})
