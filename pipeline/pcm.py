"""Audio into the pipeline's one format, 16 kHz mono int16: :class:`Resampler` is the one
resampler of the tree (files, WebRTC tracks, WebSocket clients all go through it) and
:class:`PcmInput` turns a client's raw s16le bytes, in pieces of any size, into samples."""

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
