"""Audio into the pipeline's one format, 16 kHz mono int16: :class:`Resampler` is the one
resampler of the tree (files, WebRTC tracks, WebSocket clients all go through it) and
:class:`PcmInput` turns a client's raw s16le bytes, in pieces of any size, into samples."""

from fractions import Fraction

import av
import numpy as np

SAMPLE_RATE = 16_000


class Resampler:
    """Any PyAV audio frame in, 16 kHz mono int16 out (swresample keeps its filter state)."""

    def __init__(self) -> None:
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)

    def resample(self, frame: av.AudioFrame) -> np.ndarray:
        return _samples(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        """What the filter still holds at the end of the input."""
        return _samples(self._resampler.resample(None))


def _samples(frames: list[av.AudioFrame]) -> np.ndarray:
    if not frames:
        return np.zeros(0, np.int16)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.int16)


class PcmInput:
    """Client bytes (s16le, any rate, one or two channels, any chunking) -> 16 kHz mono int16."""

    def __init__(self, sample_rate: int, channels: int) -> None:
        self.channels = channels
        self._frame_bytes = 2 * channels
        self._carry = b""
        self._sample_rate = sample_rate
        self._resampler = Resampler() if sample_rate != SAMPLE_RATE else None

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
        return self._resampler.resample(frame)

    def flush(self) -> np.ndarray:
        """What the resampler still holds (a trailing partial sample is dropped)."""
        if self._resampler is None:
            return np.zeros(0, np.int16)
        return self._resampler.flush()


class PcmConverter:
    """One per track or tagged stream: decoded frames (e.g. Opus, 48 kHz) in, 16 kHz mono int16 out.

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
                    start += round(gap * SAMPLE_RATE)
                    self.gap_s = float(gap)
            self._next_pts = pts + duration
        samples = self._resampler.resample(frame)
        self._samples_out = start + samples.size
        return samples, start / SAMPLE_RATE
