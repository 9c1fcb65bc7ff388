"""Audio into the pipeline's one format, 16 kHz mono int16: :class:`Resampler` is the one
resampler of the tree (files, WebRTC tracks, WebSocket clients all go through it) and
:class:`PcmInput` turns a client's raw s16le bytes, in pieces of any size, into samples."""

from fractions import Fraction

import av
import numpy as np

SAMPLE_RATE = 16_000


class Resampler:
    """Any PyAV audio frame in, 16 kHz mono int16 out (swresample keeps its filter state).

    The frames' pts are rewritten to follow on from each other: the output does not depend on
    them, but a jump in them (Opus DTX, lost packets) or none at all makes a call several
    times slower. Callers keep their own audio time.
    """

    def __init__(self) -> None:
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        self._fed = 0

    def resample(self, frame: av.AudioFrame) -> np.ndarray:
        frame.pts, frame.time_base = self._fed, Fraction(1, frame.sample_rate)
        self._fed += frame.samples
        return _samples(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        """What the filter still holds at the end of the input."""
        return _samples(self._resampler.resample(None))


def _samples(frames: list[av.AudioFrame]) -> np.ndarray:
    if not frames:
        return np.zeros(0, np.int16)
    if len(frames) == 1:
        return _packed(frames[0]).reshape(-1).astype(np.int16)
    return np.concatenate([_packed(f).reshape(-1) for f in frames]).astype(np.int16)


def _packed(frame: av.AudioFrame) -> np.ndarray:
    """``frame.to_ndarray()`` without its per-call cost for packed s16 (a view of the frame)."""
    if frame.format.name != "s16":
        return frame.to_ndarray()
    count = frame.samples * frame.layout.nb_channels
    return np.frombuffer(memoryview(frame.planes[0]), np.int16, count)


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


Chunk = tuple[np.ndarray, float]


class PcmConverter:
    """One per track or tagged stream: decoded frames (e.g. Opus, 48 kHz) in, 16 kHz mono int16 out.

    The audio time of each chunk comes from the frame's pts, so lost or missing packets become
    a hole (the speaker stream fills it with silence) instead of pulling later speech earlier.

    :meth:`add` resamples ``batch_s`` of frames at once (cut at holes): swresample's cost is
    mostly per call, and its output does not depend on how its input is cut, so the samples
    and their times are those :meth:`convert` gives frame by frame.
    """

    def __init__(self, batch_s: float = 0.1) -> None:
        self._resampler = Resampler()
        self._timing: tuple[Fraction, int] | None = None
        self._scale: int | Fraction = 1
        self._next: int | Fraction | None = None  # where the next frame starts, in its samples
        self._samples_out = 0
        self.gap_s = 0.0  # the hole before the last frame (Opus DTX silence or lost packets)
        self.batch_s = batch_s
        self._batch: list[np.ndarray] = []
        self._batch_frame: av.AudioFrame | None = None
        self._batch_start = 0
        self._batch_samples = 0

    def restart(self) -> None:
        """The next chunk starts a new stream at audio time 0 (frames not yet resampled are dropped)."""
        self._next = None
        self._samples_out = 0
        self._batch, self._batch_frame, self._batch_samples = [], None, 0

    def convert(self, frame: av.AudioFrame) -> Chunk | None:
        """Samples and audio time (s since the stream's first sample); ``None`` for a late frame."""
        hole = self._hole(frame)
        if hole is None:
            return None
        start = self._samples_out + hole
        samples = self._resampler.resample(frame)
        self._samples_out = start + samples.size
        return samples, start / SAMPLE_RATE

    def add(self, frame: av.AudioFrame) -> list[Chunk] | None:
        """The chunks that are complete with this frame: a batch is handed out when it holds
        ``batch_s`` or a hole follows it; ``None`` for a late frame (dropped)."""
        hole = self._hole(frame)
        if hole is None:
            return None
        chunks = []
        if hole and self._batch:
            chunks.append(self._resample_batch())
        if not self._batch:
            self._batch_frame = frame
            self._batch_start = self._samples_out + hole
        self._batch.append(_packed(frame).reshape(1, -1))
        self._batch_samples += frame.samples
        if self._batch_samples >= self.batch_s * frame.sample_rate:
            chunks.append(self._resample_batch())
        return chunks

    def flush(self) -> list[Chunk]:
        """The frames :meth:`add` still holds, resampled (the filter keeps its own tail)."""
        return [self._resample_batch()] if self._batch else []

    def _resample_batch(self) -> Chunk:
        first, arrays = self._batch_frame, self._batch
        assert first is not None
        self._batch, self._batch_frame, self._batch_samples = [], None, 0
        if len(arrays) == 1:
            frame = first
        else:
            frame = av.AudioFrame.from_ndarray(
                np.concatenate(arrays, axis=1), format=first.format.name, layout=first.layout.name
            )
            frame.sample_rate = first.sample_rate
        samples = self._resampler.resample(frame)
        self._samples_out = self._batch_start + samples.size
        return samples, self._batch_start / SAMPLE_RATE

    def _hole(self, frame: av.AudioFrame) -> int | None:
        """16 kHz samples of hole before ``frame`` (0 when it follows on); ``None`` when it is
        late. Times are counted in the frame's own samples: integers when the pts run in that
        clock (as Opus's do), so no Fraction per frame."""
        self.gap_s = 0.0
        rate, time_base = frame.sample_rate, frame.time_base  # each read of time_base builds one
        if frame.pts is None or time_base is None or not rate:
            return 0
        timing = (time_base, rate)
        if timing != self._timing:
            if self._next is not None and self._timing is not None:
                self._next = self._next * Fraction(rate, self._timing[1])
            self._timing = timing
            scale = time_base * rate
            self._scale = scale.numerator if scale.denominator == 1 else scale
        begin = frame.pts * self._scale
        gap = 0 if self._next is None else begin - self._next
        if 2 * gap <= -frame.samples:
            return None
        self._next = begin + frame.samples
        if 2 * gap < frame.samples:
            return 0
        self.gap_s = float(gap / rate)
        return round(Fraction(gap * SAMPLE_RATE, rate))
