"""Offline transcription of whole recordings with faster-whisper (VAD, word timestamps).

The text comes from the plain faster-whisper call (Silero VAD filter, beam search). Its own
word timestamps are not used: with them its window seeks to the last aligned word, and a
short turn left after that point is decoded alone, judged silent and dropped. Words are
aligned afterwards on each segment's own audio (:mod:`engines.whisper_align`). Then every
VAD speech stretch of at least ``COVERAGE_MIN_S`` must hold a recognized word; an uncovered
one is decoded again alone with padding, and one that is still empty is counted in the
result and logged.
"""

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import _LANGUAGE_CODES as _LANGUAGES
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.vad import SpeechTimestampsMap, VadOptions, get_speech_timestamps

from engines.base import SAMPLE_RATE, EngineError, RecognizedWord, as_float32
from engines.cpu_threads import one_blas_thread
from engines.whisper_align import encode, timed_words

log = logging.getLogger(__name__)

COVERAGE_MIN_S = 0.5
RETRY_PAD_S = 0.5
ALIGN_PAD_S = 0.3


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
    redecoded: int = 0
    uncovered: tuple[tuple[float, float], ...] = field(default=())


def join_words(words: list[RecognizedWord] | tuple[RecognizedWord, ...]) -> str:
    return " ".join(w.word for w in words)


def split_at_pauses(segment: BatchSegment, pause_s: float = 1.5) -> list[BatchSegment]:
    """Split a segment where its words pause (one speaker's two turns), keeping its text
    where it stays whole."""
    groups: list[list[RecognizedWord]] = []
    for word in segment.words:
        if not groups or word.start - groups[-1][-1].end >= pause_s:
            groups.append([])
        groups[-1].append(word)
    if len(groups) <= 1:
        return [segment]
    return [BatchSegment(g[0].start, g[-1].end, join_words(g), tuple(g)) for g in groups]


def speech_spans(audio: np.ndarray) -> list[tuple[int, int]]:
    """Silero speech regions in samples, by the VAD and defaults of faster-whisper's own
    ``vad_filter`` (the stretches the decode is expected to cover)."""
    return [(s["start"], s["end"]) for s in get_speech_timestamps(audio, VadOptions())]


def _restore(
    word: RecognizedWord, timeline: SpeechTimestampsMap | None, offset: float
) -> RecognizedWord:
    """A word's time in the glued speech mapped to the recording (both ends in the chunk
    holding its middle) plus ``offset``."""
    start, end = word.start, word.end
    if timeline is not None:
        chunk = timeline.get_chunk_index((start + end) / 2)
        start = timeline.get_original_time(start, chunk)
        end = timeline.get_original_time(end, chunk)
    return RecognizedWord(
        word.word, round(start + offset, 3), round(end + offset, 3), word.confidence
    )


def _covered(span: tuple[float, float], words: list[RecognizedWord]) -> bool:
    start, end = span
    return any(w.end > start and w.start < end for w in words)


class WhisperBatch:
    """A loaded faster-whisper model. ``transcribe`` blocks: call it from a worker thread."""

    def __init__(
        self, name: str, path: Path, threads: int = 0, workers: int = 2, device: str = "cpu"
    ) -> None:
        """``workers`` calls may run at once (a post-call pass decodes speakers side by side:
        small Whisper matrices do not keep two cores busy from one call)."""
        self.name = name
        self.path = path
        one_blas_thread()
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

    @property
    def multilingual(self) -> bool:
        return bool(self._model.model.is_multilingual)

    def _tokenizer(self, language: str | None) -> Tokenizer:
        return Tokenizer(
            self._model.hf_tokenizer,
            self.multilingual,
            task="transcribe",
            language=language or "en",
        )

    def _decode(
        self,
        audio: np.ndarray,
        language: str | None,
        beam_size: int,
        offset: float,
        spans: list[tuple[int, int]] | None,
    ) -> tuple[list[BatchSegment], str | None]:
        """The plain faster-whisper call on the speech ``spans`` glued together (what its
        ``vad_filter`` does), without its word timestamps; each segment's words are aligned
        on the glued audio and mapped back to the recording's time."""
        chunks = [{"start": a, "end": b} for a, b in spans] if spans else []
        glued = np.concatenate([audio[a:b] for a, b in spans]) if spans else audio
        timeline = SpeechTimestampsMap(chunks, SAMPLE_RATE) if chunks else None
        pieces, info = self._model.transcribe(
            glued,
            language=language,
            beam_size=beam_size,
            vad_filter=False,
            condition_on_previous_text=False,
        )
        tokenizer = self._tokenizer(info.language)
        pad = int(ALIGN_PAD_S * SAMPLE_RATE)
        segments: list[BatchSegment] = []
        for piece in pieces:
            low = max(0, int(piece.start * SAMPLE_RATE) - pad)
            high = min(glued.size, int(piece.end * SAMPLE_RATE) + pad)
            if not piece.text.strip() or high - low < SAMPLE_RATE // 10:
                continue
            encoded, content = encode(self._model, glued[low:high])
            aligned = timed_words(
                self._model, tokenizer, piece.tokens, encoded, content, low / SAMPLE_RATE
            )
            words = tuple(_restore(w, timeline, offset) for w in aligned)
            if words:
                whole = BatchSegment(words[0].start, words[-1].end, join_words(words), words)
                segments.extend(split_at_pauses(whole))
        return segments, info.language

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
        if language is not None and self.multilingual and language not in _LANGUAGES:
            raise UnsupportedLanguageError(
                f"model {self.name!r} does not know language {language!r}"
            )
        spans = speech_spans(audio) if vad_filter else []
        if vad_filter and not spans:
            return BatchResult([], language, duration, self.name)
        with self._slots:
            segments, language = self._decode(audio, language, beam_size, offset, spans or None)
            if on_progress is not None:
                on_progress(1.0)
            words = [w for s in segments for w in s.words]
            redecoded, uncovered = 0, []
            for start, end in spans:
                span = (offset + start / SAMPLE_RATE, offset + end / SAMPLE_RATE)
                if (end - start) / SAMPLE_RATE < COVERAGE_MIN_S or _covered(span, words):
                    continue
                redecoded += 1
                pad = int(RETRY_PAD_S * SAMPLE_RATE)
                low, high = max(0, start - pad), min(audio.size, end + pad)
                found, detected = self._decode(
                    audio[low:high], language, beam_size, offset + low / SAMPLE_RATE, None
                )
                language = language or detected
                if found:
                    segments.extend(found)
                else:
                    uncovered.append((round(span[0], 3), round(span[1], 3)))
                    log.warning("%s heard no words in speech at %.1f-%.1f s", self.name, *span)
        segments.sort(key=lambda s: s.start)
        return BatchResult(segments, language, duration, self.name, redecoded, tuple(uncovered))


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
