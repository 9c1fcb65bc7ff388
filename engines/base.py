"""The recognizer contract.

An :class:`Engine` holds a loaded model and makes one :class:`EngineStream` per speaker.
An engine stream is synchronous and split in two halves:

* ``accept`` / ``finish`` / ``next_work`` are cheap and called on the event loop; ``accept``
  only appends to a buffer guarded by the stream's own lock.
* ``run`` does the heavy decoding and is called by the scheduler on a worker thread, never
  on two threads at once for the same stream.

:class:`engines.recognize.RecognizeStream` wraps an engine stream and the shared scheduler
into the async push / flush / iterate / close contract that callers use.
"""

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Literal

import numpy as np

from protocol.errors import ErrorCode

SAMPLE_RATE = 16_000


class EngineError(Exception):
    """Base of every engine failure; ``code`` is a protocol ErrorCode value."""

    code: str = ErrorCode.ENGINE_FAILED


class ModelNotFoundError(EngineError):
    code: str = ErrorCode.MODEL_NOT_FOUND

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"model {name!r} not found: {reason}")
        self.name = name


class InvalidAudioError(EngineError):
    code: str = ErrorCode.INVALID_AUDIO


@dataclass(frozen=True)
class RecognizedWord:
    word: str
    start: float
    end: float
    confidence: float = 1.0


@dataclass(frozen=True)
class Hypothesis:
    """One recognition result. Times are seconds since the stream's first sample."""

    kind: Literal["interim", "final"]
    utterance: int
    text: str
    start: float
    end: float
    words: tuple[RecognizedWord, ...] = ()
    language: str | None = None
    stable_chars: int = 0


class Work(IntEnum):
    """What a stream asks the scheduler for; lower values are more urgent."""

    FINAL = 0
    PARTIAL = 1


@dataclass
class StreamStats:
    dropped_samples: int = 0
    decodes: int = 0
    decode_seconds: float = 0.0
    rejected_utterances: int = 0
    finals_ahead: int = 0  # finals decoded during a pause before its endpoint
    finals_ahead_kept: int = 0  # of them, those the endpoint came for


class EngineStream(ABC):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stats = StreamStats()

    @abstractmethod
    def accept(self, samples: np.ndarray) -> None:
        """Append float32 mono samples at ``SAMPLE_RATE``; cheap, never decodes."""

    @abstractmethod
    def finish(self) -> None:
        """No more input: what is buffered must end up in finals."""

    @abstractmethod
    def next_work(self, load: float) -> Work | None:
        """What this stream needs now; ``load`` >= 1 stretches the partial cadence."""

    @abstractmethod
    def run(self, work: Work) -> list[Hypothesis]:
        """Do ``work`` (worker thread). Must be safe to call with nothing to do."""

    @property
    @abstractmethod
    def done(self) -> bool:
        """Finished and every final emitted."""

    @property
    def backlog_seconds(self) -> float:
        """Audio accepted but not yet decoded into finals."""
        return 0.0


@dataclass
class EngineInfo:
    name: str
    kind: str
    languages: Sequence[str] = field(default_factory=lambda: ("en",))
    max_batch: int = 1


class Engine(ABC):
    info: EngineInfo

    @abstractmethod
    def create_stream(self, language: str | None = None) -> EngineStream: ...

    def run_batch(self, jobs: Sequence[tuple[EngineStream, Work]]) -> list[list[Hypothesis]]:
        """Decode several streams in one call where the engine can; default: one by one."""
        return [stream.run(work) for stream, work in jobs]

    def transcribe(self, samples: np.ndarray, language: str | None = None) -> list[Hypothesis]:
        """Whole-file decode through the streaming path."""
        stream = self.create_stream(language)
        stream.accept(samples)
        stream.finish()
        results: list[Hypothesis] = []
        while not stream.done:
            work = stream.next_work(1.0)
            if work is None:
                break
            results.extend(h for h in stream.run(work) if h.kind == "final")
        return results

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the model."""


def as_float32(pcm: bytes | np.ndarray) -> np.ndarray:
    """16-bit little-endian bytes or an int16/float array -> float32 in [-1, 1]."""
    if isinstance(pcm, bytes | bytearray | memoryview):
        raw = bytes(pcm)
        if len(raw) % 2:
            raise InvalidAudioError(
                f"odd byte count {len(raw)}: s16le PCM needs whole 2-byte samples"
            )
        return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    array = np.asarray(pcm)
    if array.ndim != 1:
        raise InvalidAudioError(f"expected mono samples (1-D), got shape {array.shape}")
    if array.dtype == np.int16:
        return array.astype(np.float32) / 32768.0
    if array.dtype.kind == "f":
        return array.astype(np.float32, copy=False)
    raise InvalidAudioError(f"unsupported sample type {array.dtype}")
