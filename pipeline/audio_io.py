"""Decoding audio files of any format PyAV reads into 16 kHz mono int16."""

from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

from pipeline.pcm import SAMPLE_RATE, Resampler

__all__ = ["SAMPLE_RATE", "AudioDecodeError", "decode_file"]


class AudioDecodeError(Exception):
    """The input is not decodable audio; ``code`` is a protocol ErrorCode value."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def decode_file(source: str | Path | BinaryIO, max_seconds: float | None = None) -> np.ndarray:
    """All audio of the first audio stream, resampled to 16 kHz mono int16.

    Raises :class:`AudioDecodeError` with ``UNSUPPORTED_FORMAT`` for files that are not
    audio, ``INVALID_AUDIO`` for corrupt ones and ``EMPTY_AUDIO`` when nothing decodes.
    """
    name = str(source) if isinstance(source, str | Path) else getattr(source, "name", "upload")
    if isinstance(source, str | Path):
        if not Path(source).exists():
            raise AudioDecodeError("NOT_FOUND", f"{name}: no such file")
        if Path(source).stat().st_size == 0:
            raise AudioDecodeError("EMPTY_AUDIO", f"{name}: the file is empty")
    try:
        container = av.open(str(source) if isinstance(source, Path) else source, mode="r")
    except av.error.InvalidDataError as exc:  # type: ignore[attr-defined]
        raise AudioDecodeError(
            "UNSUPPORTED_FORMAT", f"{name}: not a recognised audio format"
        ) from exc
    except (av.error.FFmpegError, OSError) as exc:  # type: ignore[attr-defined]
        raise AudioDecodeError("UNSUPPORTED_FORMAT", f"{name}: cannot open: {exc}") from exc
    chunks: list[np.ndarray] = []
    total = 0
    with container:
        if not container.streams.audio:
            raise AudioDecodeError("UNSUPPORTED_FORMAT", f"{name}: contains no audio stream")
        stream = container.streams.audio[0]
        resampler = Resampler()
        try:
            for frame in container.decode(stream):
                data = resampler.resample(frame)
                if data.size:
                    chunks.append(data)
                    total += data.size
                if max_seconds is not None and total > max_seconds * SAMPLE_RATE:
                    raise AudioDecodeError("TOO_LARGE", f"{name}: longer than {max_seconds:.0f} s")
            chunks.append(resampler.flush())
        except av.error.FFmpegError as exc:  # type: ignore[attr-defined]
            if not chunks:
                raise AudioDecodeError("INVALID_AUDIO", f"{name}: corrupt audio: {exc}") from exc
    samples = np.concatenate(chunks).astype(np.int16) if chunks else np.zeros(0, np.int16)
    if samples.size == 0:
        raise AudioDecodeError("EMPTY_AUDIO", f"{name}: contains no audio samples")
    return samples
