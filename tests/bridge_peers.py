"""Real aiortc peers that publish speech to the bridge, and the bridge's live runtime."""

import asyncio
import fractions
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import cache
from pathlib import Path

import av
import httpx
import ifaddr
import jiwer
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from fastapi import FastAPI
from faster_whisper import WhisperModel

from bench.scoring import normalize, wer
from config import Settings, load_settings
from engines.models import resolve
from pipeline.runtime import LiveRuntime
from pipeline.sink import CollectingSink, FanOutSink, FrameSink
from protocol import CaptionFrame, EventFrame
from sfu_bridge import Bridge, bridge_router
from tests.conftest import LIBRIVOX, librivox_reference, read_wav16
from tests.live_helpers import live_engine

FRAME = 320  # 20 ms at 16 kHz


@cache
def plain_text(reference: str) -> str:
    """Plain faster-whisper (the live model, beam 5, VAD filter) on the LibriVox clip whose
    reference is ``reference``: the bar for captions of that clip."""
    fileid = next(
        f for f, t in librivox_reference().items() if normalize(t) == normalize(reference)
    )
    model = WhisperModel(
        str(resolve("whisper-tiny.en", load_settings().data_dir).path),
        device="cpu",
        compute_type="int8",
    )
    audio = read_wav16(LIBRIVOX / f"{fileid}.wav").astype(np.float32) / 32768
    segments, _ = model.transcribe(audio, beam_size=5, vad_filter=True)
    return " ".join(segment.text for segment in segments)


def assert_captions(spoken: dict[str, str], heard: dict[str, str]) -> None:
    """At most three word errors over every participant more than the plain model on the same
    clips (Opus coding and live cutting cost a word or two: a word cut mid-way by a partial
    can be heard as two, "able to supposed" for "ill-disposed"; a lost sentence is 7-20
    words), and each participant's own text is theirs.

    ``spoken``: participant -> reference text, ``heard``: participant -> joined final text.
    """
    refs = [normalize(spoken[who]) for who in spoken]
    hyps = [normalize(heard.get(who, "")) for who in spoken]
    assert all(hyps), heard

    def errors(texts: list[str]) -> int:
        out = jiwer.process_words(refs, texts)
        return out.substitutions + out.deletions + out.insertions

    ours = errors(hyps)
    plain = errors([normalize(plain_text(spoken[who])) for who in spoken])
    assert ours <= plain + 3, (ours, plain, heard)
    for who in spoken:
        assert wer(spoken[who], heard[who]) <= 0.3, (who, heard[who])


def host_address() -> str:
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                return ip.ip
    raise RuntimeError("no non-loopback IPv4 address: WebRTC tests need one")


def utterance(fileid: str) -> np.ndarray:
    return read_wav16(LIBRIVOX / f"{fileid}.wav")


class SpeechTrack(MediaStreamTrack):
    """Sends 16 kHz mono speech in real time, silence between what it is told to :meth:`say`.

    Once everything said has been sent it keeps sending silence (``then="silence"``), ends
    (``"end"``) or hangs without sending anything (``"hang"``: a peer that vanished).
    """

    kind = "audio"

    def __init__(
        self, samples: np.ndarray | None = None, tail_s: float = 1.0, then: str = "silence"
    ) -> None:
        super().__init__()
        self.then = then
        self.buffer = np.zeros(0, np.int16)
        self.sent = 0
        self.spoken = asyncio.Event()
        self._start: float | None = None
        if samples is not None:
            self.say(samples, tail_s)

    def say(self, samples: np.ndarray, tail_s: float = 1.0) -> None:
        head = self.buffer[: max(self.sent, 0)]
        head = np.concatenate([head, np.zeros(max(0, self.sent - head.size), np.int16)])
        self.buffer = np.concatenate([head, samples, np.zeros(int(tail_s * 16000), np.int16)])
        self.spoken.clear()

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        if self.sent >= self.buffer.size:
            self.spoken.set()
            if self.then == "end":
                self.stop()
                raise MediaStreamError
            if self.then == "hang":
                await asyncio.Event().wait()
        wait = self._start + self.sent / 16000 - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        chunk = self.buffer[self.sent : self.sent + FRAME]
        if chunk.size < FRAME:
            chunk = np.concatenate([chunk, np.zeros(FRAME - chunk.size, np.int16)])
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 16000
        frame.pts = self.sent
        frame.time_base = fractions.Fraction(1, 16000)
        self.sent += FRAME
        return frame


def client_peer() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def offer_for(pc: RTCPeerConnection) -> str:
    await pc.setLocalDescription(await pc.createOffer())
    return pc.localDescription.sdp


async def answer(pc: RTCPeerConnection, sdp: str) -> None:
    await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))


def bridge_settings(tmp_path: Path, **bridge: object) -> Settings:
    return load_settings(data_dir=tmp_path, bridge={"host_addresses": [host_address()], **bridge})


@asynccontextmanager
async def running_bridge(
    settings: Settings, sink: FrameSink | None = None
) -> AsyncIterator[tuple[Bridge, httpx.AsyncClient, CollectingSink]]:
    collected = CollectingSink()
    runtime = await LiveRuntime.create(
        settings, collected if sink is None else FanOutSink(collected, sink), engine=live_engine()
    )
    bridge = Bridge(runtime)
    app = FastAPI()
    app.include_router(bridge_router(bridge))
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as client:
            yield bridge, client, collected
    finally:
        await bridge.aclose()
        await runtime.aclose()


def finals(sink: CollectingSink, participant: str | None = None) -> list[CaptionFrame]:
    return [
        f
        for f in sink.frames
        if isinstance(f, CaptionFrame)
        and f.type == "final"
        and f.text.strip()
        and (participant is None or f.participant == participant)
    ]


def events(sink: CollectingSink, event: str) -> list[EventFrame]:
    return [f for f in sink.frames if isinstance(f, EventFrame) and f.event == event]


async def wait_until(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.1)
