"""Remote audio track -> 16 kHz mono PCM with true audio time, and draining of unused tracks."""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from pipeline.pcm import Resampler

log = logging.getLogger(__name__)

RATE = 16000


class PcmConverter:
    """One per track: Opus frames (s16 stereo 48 kHz) in, 16 kHz mono int16 out.

    The audio time of each chunk comes from the frame's pts, so lost or missing packets become
    a hole (the speaker stream fills it with silence) instead of pulling later speech earlier.
    """

    def __init__(self) -> None:
        self._resampler = Resampler()
        self._next_pts: Fraction | None = None
        self._samples_out = 0
        self.gap_s = 0.0  # the hole before the last chunk (Opus DTX silence or lost packets)

    def restart(self) -> None:
        """The next chunk starts a new stream at audio time 0."""
        self._next_pts = None
        self._samples_out = 0

    def convert(self, frame: av.AudioFrame) -> tuple[np.ndarray, float] | None:
        """Samples and audio time (s since the stream's first sample); ``None`` for a late frame."""
        start = self._samples_out
        self.gap_s = 0.0
        if frame.pts is not None and frame.time_base is not None and frame.sample_rate:
            pts = frame.pts * frame.time_base
            duration = Fraction(frame.samples, frame.sample_rate)
            if self._next_pts is not None:
                gap = pts - self._next_pts
                if gap <= -duration / 2:
                    return None
                if gap >= duration / 2:
                    start += round(gap * RATE)
                    self.gap_s = float(gap)
            self._next_pts = pts + duration
        samples = self._resampler.resample(frame)
        self._samples_out = start + samples.size
        return samples, start / RATE


async def drain(track: MediaStreamTrack) -> None:
    """Read and discard until the track ends: an unread remote track grows without bound."""
    while True:
        try:
            await track.recv()
        except MediaStreamError:
            return


class AudioTarget(Protocol):
    """Where a track's audio goes: one participant's speaker stream in one call."""

    def push(self, pcm: np.ndarray, at: float) -> None: ...

    async def close(self, reason: str) -> None: ...


@dataclass
class AudioStats:
    """What remote tracks delivered, for ``/metrics``: a DTX sender sends few frames in
    silence, and the audio time they skip (``gap_s``) is silence, not lost speech."""

    frames: int = 0
    audio_s: float = 0.0
    gap_s: float = 0.0


@dataclass
class TrackFeed:
    """Pumps one remote audio track into the target :attr:`open_target` gives.

    A track with no target is drained. A track silent for ``stall_s`` (its peer vanished or
    stopped sending) releases its target, which flushes the speaker stream; if audio comes
    back, a fresh target is opened. Track end releases the target too.
    """

    track: MediaStreamTrack
    open_target: Callable[[], Awaitable[AudioTarget | None]]
    stall_s: float | None = None
    on_audio: Callable[[], None] | None = None
    stats: AudioStats | None = None

    batch_s: float = 0.1

    def __post_init__(self) -> None:
        self._converter = PcmConverter()
        self._target: AudioTarget | None = None
        self._pending: list[np.ndarray] = []
        self._pending_at = 0.0
        self._pending_size = 0
        self._displaced = False
        self._lock = asyncio.Lock()

    async def run(self) -> None:
        try:
            while True:
                timeout = self.stall_s if self._target is not None else None
                try:
                    # asyncio.timeout, not wait_for: no extra task per 20 ms frame
                    async with asyncio.timeout(timeout):
                        frame = await self.track.recv()
                except TimeoutError:
                    await self.release("stalled")
                    continue
                except MediaStreamError:
                    break
                if not isinstance(frame, av.AudioFrame):
                    continue
                await self._deliver(frame)
        finally:
            await asyncio.shield(self.release("left"))

    async def _deliver(self, frame: av.AudioFrame) -> None:
        async with self._lock:
            if self._displaced:
                return
            if self._target is None:
                try:
                    self._target = await self.open_target()
                except Exception:
                    log.exception("no target for track %s: its audio is dropped", self.track.id)
                    return
                self._converter.restart()
                if self._target is None:
                    return
            converted = self._converter.convert(frame)
            if converted is None:
                return
            samples, at = converted
            if self.stats is not None:
                self.stats.frames += 1
                self.stats.audio_s += samples.size / RATE
                self.stats.gap_s += self._converter.gap_s
            try:
                self._collect(self._target, samples, at)
            except Exception as exc:
                # the stream was closed under it (a newer track of the same participant, the
                # call's end): stay quiet until released rather than displace the newer one
                log.warning("track %s goes quiet: %s", self.track.id, exc)
                self._target = None
                self._displaced = True
                return
        if self.on_audio is not None:
            self.on_audio()

    def _collect(self, target: AudioTarget, samples: np.ndarray, at: float) -> None:
        """Hand audio over in ``batch_s`` pieces: the pipeline's cost is per call, and 20 ms
        frames from many tracks would make the calls, not the audio, the load."""
        expected = self._pending_at + self._pending_size / RATE
        if self._pending and abs(at - expected) > 0.005:  # a hole: hand over what came before it
            self._push(target)
        if not self._pending:
            self._pending_at = at
        self._pending.append(samples)
        self._pending_size += samples.size
        if self._pending_size >= self.batch_s * RATE:
            self._push(target)

    def _push(self, target: AudioTarget) -> None:
        if self._pending:
            samples = np.concatenate(self._pending)
            self._pending, self._pending_size = [], 0
            target.push(samples, self._pending_at)

    async def release(self, reason: str) -> None:
        """Flush and let go of the current target; the next frame asks :attr:`open_target` again."""
        async with self._lock:
            target, self._target = self._target, None
            self._displaced = False
            if target is not None:
                try:
                    self._push(target)
                except Exception as exc:
                    log.warning("track %s: last audio lost: %s", self.track.id, exc)
                await target.close(reason)
            self._pending, self._pending_size = [], 0
