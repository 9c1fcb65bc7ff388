"""Remote audio track -> 16 kHz mono PCM with true audio time, and draining of unused tracks."""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from pipeline.pcm import PcmConverter
from pipeline.tasks import TaskSet

log = logging.getLogger(__name__)

RATE = 16000

__all__ = ["AudioStats", "AudioTarget", "PcmConverter", "TrackFeed", "drain"]


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
        # audio goes over in ``batch_s`` pieces: the pipeline's cost is per call, and 20 ms
        # frames from many tracks would make the calls, not the audio, the load
        self._converter = PcmConverter(self.batch_s)
        self._target: AudioTarget | None = None
        self._displaced = False
        self._lock = asyncio.Lock()
        self._heard_at = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self._stalls = TaskSet(f"track {self.track.id}")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._heard_at = loop.time()
        if self.stall_s is not None:
            self._watchdog = loop.call_later(self.stall_s, self._watch)
        try:
            while True:
                try:
                    frame = await self.track.recv()
                except MediaStreamError:
                    break
                self._heard_at = loop.time()
                if not isinstance(frame, av.AudioFrame):
                    continue
                await self._deliver(frame)
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
            await asyncio.shield(self.release("left"))

    def _watch(self) -> None:
        """A timer per ``stall_s``, not a timeout per 20 ms frame: a track with a target that
        sent nothing for ``stall_s`` releases it (its peer vanished or stopped sending)."""
        assert self.stall_s is not None
        loop = asyncio.get_running_loop()
        quiet = loop.time() - self._heard_at
        if self._target is None or quiet >= self.stall_s:
            if self._target is not None:
                self._stalls.spawn(self._release_stalled(), f"stall {self.track.id}")
            quiet = 0.0
        self._watchdog = loop.call_later(self.stall_s - quiet, self._watch)

    async def _release_stalled(self) -> None:
        quiet = asyncio.get_running_loop().time() - self._heard_at
        if self.stall_s is not None and quiet >= self.stall_s:  # no frame came meanwhile
            await self.release("stalled")

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
            chunks = self._converter.add(frame)
            if chunks is None:
                return
            if self.stats is not None:
                self.stats.frames += 1
                self.stats.gap_s += self._converter.gap_s
            try:
                self._hand_over(self._target, chunks)
            except Exception as exc:
                # the stream was closed under it (a newer track of the same participant, the
                # call's end): stay quiet until released rather than displace the newer one
                log.warning("track %s goes quiet: %s", self.track.id, exc)
                self._target = None
                self._displaced = True
                return
        if self.on_audio is not None:
            self.on_audio()

    def _hand_over(self, target: AudioTarget, chunks: list[tuple[np.ndarray, float]]) -> None:
        for samples, at in chunks:
            if self.stats is not None:
                self.stats.audio_s += samples.size / RATE
            target.push(samples, at)

    async def release(self, reason: str) -> None:
        """Flush and let go of the current target; the next frame asks :attr:`open_target` again."""
        async with self._lock:
            target, self._target = self._target, None
            self._displaced = False
            if target is not None:
                try:
                    self._hand_over(target, self._converter.flush())
                except Exception as exc:
                    log.warning("track %s: last audio lost: %s", self.track.id, exc)
                await target.close(reason)
            self._converter.restart()
