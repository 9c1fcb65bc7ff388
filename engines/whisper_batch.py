"""Offline transcription of whole recordings with faster-whisper (word timestamps, VAD)."""

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import _LANGUAGE_CODES as _LANGUAGES

from engines.base import SAMPLE_RATE, EngineError, RecognizedWord, as_float32


class UnsupportedLanguageError(EngineError):
    code = "INVALID_REQUEST"


@dataclass(frozen=True)
class BatchSegment:
    """One recognized stretch of speech; times in seconds from the start of the audio plus offset."""

    start: float
    end: float
    text: str
    words: tuple[RecognizedWord, ...]


@dataclass(frozen=True)
class BatchResult:
    segments: list[BatchSegment]
    language: str | None
    duration: float
    model: str


def split_at_pauses(segment: BatchSegment, pause_s: float = 1.5) -> list[BatchSegment]:
    """VAD-filtered decoding glues speech chunks together, so one segment can span a long
    silence (two turns of one speaker); split it where its words pause."""
    groups: list[list[RecognizedWord]] = []
    for word in segment.words:
        if not groups or word.start - groups[-1][-1].end >= pause_s:
            groups.append([])
        groups[-1].append(word)
    if len(groups) <= 1:
        return [segment]
    return [
        BatchSegment(g[0].start, g[-1].end, " ".join(w.word for w in g), tuple(g)) for g in groups
    ]


class WhisperBatch:
    """A loaded faster-whisper model. ``transcribe`` blocks: call it from a worker thread."""

    def __init__(
        self, name: str, path: Path, threads: int = 0, workers: int = 2, device: str = "cpu"
    ) -> None:
        """``workers`` calls may run at once (a post-call pass decodes speakers side by side:
        small Whisper matrices do not keep two cores busy from one call)."""
        self.name = name
        self.path = path
        try:
            self._model = WhisperModel(
                str(path),
                device=device,
                compute_type="int8" if device == "cpu" else "int8_float16",
                cpu_threads=threads,
                num_workers=workers,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise EngineError(f"cannot load whisper model {name!r} from {path}: {exc}") from exc
        self._slots = threading.BoundedSemaphore(workers)

    def transcribe(
        self,
        samples: np.ndarray,
        language: str | None = None,
        beam_size: int = 5,
        vad_filter: bool = True,
        offset: float = 0.0,
        on_progress: Callable[[float], None] | None = None,
    ) -> BatchResult:
        """Recognize 16 kHz mono audio; ``on_progress`` gets the fraction of audio done (0-1)."""
        audio = as_float32(samples)
        duration = audio.size / SAMPLE_RATE
        if audio.size == 0:
            return BatchResult([], language, 0.0, self.name)
        if (
            language is not None
            and self._model.model.is_multilingual
            and language not in _LANGUAGES
        ):
            raise UnsupportedLanguageError(
                f"model {self.name!r} does not know language {language!r}"
            )
        with self._slots:
            pieces, info = self._model.transcribe(
                audio,
                language=language,
                beam_size=beam_size,
                vad_filter=vad_filter,
                word_timestamps=True,
                condition_on_previous_text=False,
            )
            segments: list[BatchSegment] = []
            for piece in pieces:
                words = tuple(
                    RecognizedWord(
                        word=w.word.strip(),
                        start=round(w.start + offset, 3),
                        end=round(max(w.end, w.start) + offset, 3),
                        confidence=float(min(max(w.probability, 0.0), 1.0)),
                    )
                    for w in piece.words or ()
                    if w.word.strip()
                )
                text = piece.text.strip()
                if not text:
                    continue
                segments.extend(
                    split_at_pauses(
                        BatchSegment(
                            start=round(piece.start + offset, 3),
                            end=round(max(piece.end, piece.start) + offset, 3),
                            text=text,
                            words=words,
                        )
                    )
                )
                if on_progress is not None and duration > 0:
                    on_progress(min(piece.end / duration, 1.0))
        return BatchResult(segments, info.language, duration, self.name)


class WhisperModels:
    """Loaded models by name, loaded once per process (loading base takes seconds)."""

    def __init__(self, data_dir: Path, threads: int = 0, device: str = "cpu") -> None:
        self.data_dir = data_dir
        self.threads = threads
        self.device = device
        self._loaded: dict[str, WhisperBatch] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> WhisperBatch:
        """Resolve and load ``name``; raises ModelNotFoundError. Blocks: call from a thread."""
        from engines.models import resolve

        with self._lock:
            if name not in self._loaded:
                resolved = resolve(name, self.data_dir)
                self._loaded[name] = WhisperBatch(
                    name, Path(resolved.path), self.threads, device=self.device
                )
            return self._loaded[name]
