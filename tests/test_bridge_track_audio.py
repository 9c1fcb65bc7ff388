"""Track -> PCM: Opus-decoded frames with holes and late packets keep audio time true."""

import asyncio
import fractions
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from pipeline.recorder import CallRecord
from pipeline.runtime import LiveRuntime
from pipeline.sink import CollectingSink
from sfu_bridge.bridge import Bridge
from sfu_bridge.peer import TrackOwner
from sfu_bridge.track_audio import PcmConverter, TrackFeed, drain
from tests.bridge_peers import bridge_settings
from tests.conftest import read_wav16
from tests.live_helpers import live_engine

TIME_BASE = fractions.Fraction(1, 48000)


def opus_like(pts: int, value: int = 1000) -> av.AudioFrame:
    """What aiortc's Opus decoder yields: s16 stereo 48 kHz, 960 samples, pts in 1/48000."""
    samples = np.full((1, 960 * 2), value, np.int16)
    frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="stereo")
    frame.sample_rate = 48000
    frame.pts = pts
    frame.time_base = TIME_BASE
    return frame


def test_holes_move_audio_time_and_late_frames_are_dropped() -> None:
    converter = PcmConverter()
    times: list[Any] = []
    total = 0
    for pts in (0, 960, 1920, 960 * 10, 960 * 5, 960 * 11):
        converted = converter.convert(opus_like(pts))
        if converted is None:
            times.append(None)
            continue
        samples, at = converted
        assert samples.dtype == np.int16 and samples.ndim == 1
        total += samples.size
        times.append(round(at, 3))
    assert times[0] == 0.0
    assert 0.0 < times[1] <= 0.02 and times[1] < times[2] <= 0.04
    # pts 9600 is 0.2 s: seven frames (140 ms) were lost before it
    assert abs(times[3] - 0.2) < 0.005, times
    assert times[4] is None, "a frame older than what came before must be dropped"
    assert abs(times[5] - 0.22) < 0.005
    converter.restart()
    again = converter.convert(opus_like(960 * 40))
    assert again is not None and again[1] == 0.0


class ScriptedTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, pts: list[int]) -> None:
        super().__init__()
        self.pts = list(pts)

    async def recv(self) -> av.AudioFrame:
        await asyncio.sleep(0)
        if not self.pts:
            self.stop()
            raise MediaStreamError
        return opus_like(self.pts.pop(0))


async def test_feed_fills_holes_and_track_end_flushes(tmp_path: Path) -> None:
    settings = bridge_settings(tmp_path)
    runtime = await LiveRuntime.create(settings, CollectingSink(), engine=live_engine())
    bridge = Bridge(runtime)
    try:
        # 1 s of frames with a 0.5 s hole in the middle
        pts = [i * 960 for i in range(25)] + [i * 960 for i in range(50, 75)]
        heard = []
        feed = TrackFeed(
            ScriptedTrack(pts),
            open_target=lambda: bridge.open_track("r", TrackOwner("p1", "P One")),
            on_audio=lambda: heard.append(1),
        )
        await feed.run()
        assert len(heard) == 50
        call = bridge.rooms["r"]
        assert "p1" not in call.participants  # flushed at track end
        record = await call.end("ended")
        assert isinstance(record, CallRecord)
        audio = read_wav16(record.directory / record.participants[0].file)
        assert abs(audio.size / 16000 - 1.5) < 0.03, audio.size / 16000
        assert np.abs(audio[int(0.6 * 16000) : int(0.9 * 16000)]).max() == 0, (
            "the hole must be silence"
        )
    finally:
        await bridge.aclose()
        await runtime.aclose()


async def test_drain_reads_until_the_track_ends() -> None:
    track = ScriptedTrack([0, 960, 1920])
    await asyncio.wait_for(drain(track), 5)
    assert track.readyState == "ended"


class GatedTrack(ScriptedTrack):
    """Sends ``first`` frames, waits for :attr:`gate`, then sends the rest."""

    def __init__(self, pts: list[int], first: int) -> None:
        super().__init__(pts)
        self.first = first
        self.sent = 0
        self.gate = asyncio.Event()
        self.held = asyncio.Event()

    async def recv(self) -> av.AudioFrame:
        if self.sent == self.first:
            self.held.set()
            await self.gate.wait()
        self.sent += 1
        return await super().recv()


async def test_newer_track_of_a_participant_displaces_the_older(tmp_path: Path) -> None:
    runtime = await LiveRuntime.create(
        bridge_settings(tmp_path), CollectingSink(), engine=live_engine()
    )
    bridge = Bridge(runtime)
    try:
        old = GatedTrack([i * 960 for i in range(20)], first=10)
        old_feed = TrackFeed(old, open_target=lambda: bridge.open_track("r", TrackOwner("p1")))
        running = asyncio.create_task(old_feed.run())
        await old.held.wait()
        new = GatedTrack([i * 960 for i in range(50)], first=25)
        new_feed = TrackFeed(new, open_target=lambda: bridge.open_track("r", TrackOwner("p1")))
        newer = asyncio.create_task(new_feed.run())
        await new.held.wait()
        call = bridge.rooms["r"]
        stream = call.participants["p1"]
        old.gate.set()
        await running  # the old track ends without taking p1 back or closing the new stream
        assert call.participants["p1"] is stream
        new.gate.set()
        await newer
        record = await call.end("ended")
        seconds = [read_wav16(record.directory / p.file).size / 16000 for p in record.participants]
        # the displaced track may lose what it had not handed over yet: one batch at most
        assert 0.2 - old_feed.batch_s <= seconds[0] <= 0.2 and round(seconds[1], 1) == 1.0, seconds
    finally:
        await bridge.aclose()
        await runtime.aclose()
