"""Decoding audio files of any format PyAV reads into 16 kHz mono int16."""

from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

from pipeline.pcm import SAMPLE_RATE, Resampler
from protocol.errors import ErrorCode

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
            raise AudioDecodeError(ErrorCode.NOT_FOUND, f"{name}: no such file")
        if Path(source).stat().st_size == 0:
            raise AudioDecodeError(ErrorCode.EMPTY_AUDIO, f"{name}: the file is empty")
    try:
        container = av.open(str(source) if isinstance(source, Path) else source, mode="r")
    except av.error.InvalidDataError as exc:  # type: ignore[attr-defined]
        if _head(source)[4:8] == b"ftyp":
            raise AudioDecodeError(
                ErrorCode.INVALID_AUDIO,
                f"{name}: truncated or corrupt MP4/M4A (no readable moov box)",
            ) from exc
        raise AudioDecodeError(
            ErrorCode.UNSUPPORTED_FORMAT, f"{name}: not a recognised audio format"
        ) from exc
    except (av.error.FFmpegError, OSError) as exc:  # type: ignore[attr-defined]
        raise AudioDecodeError(ErrorCode.UNSUPPORTED_FORMAT, f"{name}: cannot open: {exc}") from exc
    chunks: list[np.ndarray] = []
    total = 0
    with container:
        if not container.streams.audio:
            raise AudioDecodeError(
                ErrorCode.UNSUPPORTED_FORMAT, f"{name}: contains no audio stream"
            )
        stream = container.streams.audio[0]
        resampler = Resampler()
        try:
            for frame in container.decode(stream):
                data = resampler.resample(frame)
                if data.size:
                    chunks.append(data)
                    total += data.size
                if max_seconds is not None and total > max_seconds * SAMPLE_RATE:
                    raise AudioDecodeError(
                        ErrorCode.TOO_LARGE, f"{name}: longer than {max_seconds:.0f} s"
                    )
            chunks.append(resampler.flush())
        except av.error.FFmpegError as exc:  # type: ignore[attr-defined]
            if not chunks:
                raise AudioDecodeError(
                    ErrorCode.INVALID_AUDIO, f"{name}: corrupt audio: {exc}"
                ) from exc
    samples = np.concatenate(chunks).astype(np.int16) if chunks else np.zeros(0, np.int16)
    if samples.size == 0:
        raise AudioDecodeError(ErrorCode.EMPTY_AUDIO, f"{name}: contains no audio samples")
    return samples


def wav_header_seconds(head: bytes) -> float | None:
    """What a RIFF/WAVE header declares (data chunk size over byte rate), if ``head`` is one.

    FFmpeg estimates a WAV's duration from the file size, so a truncated WAV looks whole to
    it; the header's own data size says otherwise. Streaming sizes (0, 0xFFFFFFFF) declare
    nothing.
    """
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    byte_rate = 0
    at = 12
    while at + 8 <= len(head):
        chunk, size = head[at : at + 4], int.from_bytes(head[at + 4 : at + 8], "little")
        if chunk == b"fmt " and at + 16 <= len(head):
            byte_rate = int.from_bytes(head[at + 16 : at + 20], "little")
        elif chunk == b"data":
            if not byte_rate or size in (0, 0xFFFFFFFF):
                return None
            return size / byte_rate
        at += 8 + size + (size & 1)
    return None


def _head(source: str | Path | BinaryIO, size: int = 16) -> bytes:
    if isinstance(source, str | Path):
        with open(source, "rb") as file:
            return file.read(size)
    source.seek(0)
    return source.read(size)


def ogg_ends_cleanly(tail: bytes) -> bool | None:
    """For the last bytes of an Ogg file: whether its last page is whole and ends the stream
    (an Ogg header declares no duration, so a cut file shows only here); None if not Ogg."""
    at = tail.rfind(b"OggS")
    if at < 0 or len(tail) < at + 27:
        return None
    segments = tail[at + 27 : at + 27 + tail[at + 26]]
    whole = at + 27 + len(segments) + sum(segments) == len(tail) and len(segments) == tail[at + 26]
    return whole and bool(tail[at + 5] & 0x04)
