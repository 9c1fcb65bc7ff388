"""Whisper (faster-whisper / CTranslate2) made streaming: VAD cuts utterances, the open
utterance is re-decoded at a cadence for partials, the closed one decoded once for its final.

Whisper pads every input to a 30 s window, which makes a decode cost the same whatever the
clip length. CTranslate2's encoder takes shorter inputs, so each clip is encoded as it is plus
one second of silence: a fifth to a tenth of the padded cost. Partials are decoded greedily;
finals with beam search and word timestamps (cross-attention alignment on the same short
encoder output). The partial cadence is in audio seconds and stretches with the scheduler's
``load``.
Partials keep a stable prefix: words two consecutive decodes agree on are committed and
never retracted, so captions do not flicker.
"""

import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import merge_punctuations

from engines.base import (
    SAMPLE_RATE,
    Engine,
    EngineInfo,
    EngineStream,
    Hypothesis,
    RecognizedWord,
    Work,
)
from engines.silero import SileroGate
from engines.vad import FRAME, SpeechGate, VadConfig


@dataclass
class WhisperOptions:
    partial_interval_s: float = 0.6
    max_partial_interval_s: float = 3.0
    max_utterance_s: float = 12.0
    min_partial_s: float = 0.4
    vad: VadConfig = field(default_factory=VadConfig)
    final_beam_size: int = 5
    partials: bool = True
    neural_gate: bool = True


@dataclass(eq=False)
class _Utterance:
    index: int
    start: int
    chunks: list[np.ndarray] = field(default_factory=list)
    size: int = 0
    decoded_size: int = 0
    confirmed: bool = False
    committed: list[str] = field(default_factory=list)
    previous: list[str] = field(default_factory=list)
    partials_sent: int = 0

    def add(self, frame: np.ndarray) -> None:
        self.chunks.append(frame)
        self.size += frame.size

    def samples(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)


def _norm(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())


def _join_word_pieces(alignment: list[dict]) -> list[dict]:
    """Whisper splits "cold-hearted" into "cold" + "-hearted": a piece without a leading space
    continues the word before it."""
    words: list[dict] = []
    for piece in alignment:
        if words and piece["word"] and not piece["word"].startswith(" "):
            last = words[-1]
            last["word"] += piece["word"]
            last["end"] = piece["end"]
            last["probability"] = min(last["probability"], piece["probability"])
        elif piece["word"]:
            words.append(dict(piece))
    return words


def cut_repetition(words: list[str]) -> list[str]:
    """Drop a decode loop: from the first phrase of 2-6 words that repeats back to back."""
    keys = [_norm(w) for w in words]
    for begin in range(len(keys)):
        for size in range(2, 7):
            if (
                begin + 2 * size <= len(keys)
                and keys[begin : begin + size] == keys[begin + size : begin + 2 * size]
            ):
                return words[: begin + size]
    return words


class WhisperChunkedEngine(Engine):
    def __init__(
        self,
        model_path: Path,
        name: str,
        *,
        options: WhisperOptions | None = None,
        language: str | None = "en",
        parallel: int = 2,
        cpu_threads: int = 1,
        device: str = "cpu",
        compute_type: str = "int8",
    ) -> None:
        self.options = options or WhisperOptions()
        self.language = language
        self.model = WhisperModel(
            str(model_path),
            device=device,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            num_workers=parallel,
        )
        self.gate = SileroGate.packaged(parallel) if self.options.neural_gate else None
        self._tokenizers: dict[str, Tokenizer] = {}
        multilingual = bool(self.model.model.is_multilingual)
        self.info = EngineInfo(
            name=name, kind="whisper", languages=("*",) if multilingual else ("en",)
        )

    def create_stream(self, language: str | None = None) -> "WhisperStream":
        return WhisperStream(self, language or self.language)

    def _tokenizer(self, language: str) -> Tokenizer:
        """One per language, built once: every partial and final decode needs one."""
        if language not in self._tokenizers:
            self._tokenizers[language] = Tokenizer(
                self.model.hf_tokenizer,
                self.model.model.is_multilingual,
                task="transcribe",
                language=language,
            )
        return self._tokenizers[language]

    def decode(
        self, samples: np.ndarray, offset: float, language: str | None, final: bool = True
    ) -> tuple[str, list[RecognizedWord], str | None]:
        """Text, words (finals only; times shifted by ``offset``) and language of one clip."""
        features = self.model.feature_extractor(samples)
        content = features.shape[-1]
        frames = min(3000, int(np.ceil((content + 100) / 100) * 100))
        window = np.zeros((features.shape[0], frames), np.float32)
        window[:, : min(frames, content)] = features[:, :frames]
        encoded = self.model.model.encode(
            ctranslate2.StorageView.from_array(window[None]), to_cpu=False
        )
        if language is None and self.model.model.is_multilingual:
            language = self.model.model.detect_language(encoded)[0][0][0][2:-2]
        tokenizer = self._tokenizer(language or "en")
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        # speech rarely exceeds 6 tokens a second; a cap stops short-clip repetition loops
        budget = len(prompt) + 8 + int(8 * samples.size / SAMPLE_RATE)
        result = self.model.model.generate(
            encoded,
            [prompt],
            beam_size=self.options.final_beam_size if final else 1,
            max_length=min(224, budget),
            no_repeat_ngram_size=0 if final else 4,
            suppress_blank=True,
            suppress_tokens=[-1],
            return_scores=True,
            return_no_speech_prob=True,
        )[0]
        tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
        if result.no_speech_prob > 0.6 and result.scores[0] < -1.0:
            return "", [], language
        text = str(tokenizer.decode(tokens)).strip()
        if not final or not tokens:
            return text, [], language
        words: list[RecognizedWord] = []
        end_limit = offset + samples.size / SAMPLE_RATE
        alignment = self.model.find_alignment(tokenizer, [tokens], encoded, content)[0]
        merge_punctuations(alignment, "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、")
        for word in _join_word_pieces(alignment):
            start = min(max(offset + float(word["start"]), offset), end_limit)
            end = min(max(offset + float(word["end"]), start), end_limit)
            if word["word"].strip():
                words.append(
                    RecognizedWord(
                        word["word"].strip(),
                        round(start, 3),
                        round(end, 3),
                        round(float(word["probability"]), 3),
                    )
                )
        return text, words, language

    def holds_speech(self, utterance: "_Utterance", samples: np.ndarray) -> bool:
        """Whether the neural gate confirms speech (always true without a gate)."""
        if utterance.confirmed or self.gate is None:
            return True
        utterance.confirmed = self.gate.voiced_windows(samples) > 0
        return utterance.confirmed


class WhisperStream(EngineStream):
    def __init__(self, engine: WhisperChunkedEngine, language: str | None) -> None:
        super().__init__()
        self.engine = engine
        self.language = language
        self.options = engine.options
        self._gate = SpeechGate(self.options.vad)
        self._tail = np.zeros(0, np.float32)
        self._history: deque[np.ndarray] = deque(maxlen=self._gate.onset_frames)
        self._position = 0
        self._open: _Utterance | None = None
        self._closed: deque[_Utterance] = deque()
        self._count = 0
        self._finished = False
        self._max_size = int(self.options.max_utterance_s * SAMPLE_RATE)

    def accept(self, samples: np.ndarray) -> None:
        with self.lock:
            buffer = np.concatenate((self._tail, samples)) if self._tail.size else samples
            whole = buffer.size - buffer.size % FRAME
            for begin in range(0, whole, FRAME):
                self._frame(buffer[begin : begin + FRAME])
            self._tail = buffer[whole:].copy()

    def _frame(self, frame: np.ndarray) -> None:
        event = self._gate.frame(frame)
        if self._open is None:
            if event == "start":
                self._open = _Utterance(self._count, self._position - len(self._history) * FRAME)
                self._count += 1
                for earlier in self._history:
                    self._open.add(earlier)
                self._open.add(frame)
                self._history.clear()
            else:
                self._history.append(frame)
        else:
            self._open.add(frame)
            if event == "end":
                keep = max(0, self._gate.silent_frames - self._gate.onset_frames // 2)
                self._trim(self._open, keep * FRAME)
                self._close()
            elif self._open.size >= self._max_size:
                self._close()
                self._open = _Utterance(self._count, self._position + FRAME)
                self._count += 1
        self._position += FRAME

    @staticmethod
    def _trim(utterance: _Utterance, samples: int) -> None:
        if samples <= 0:
            return
        whole = utterance.samples()[: utterance.size - samples]
        utterance.chunks = [whole]
        utterance.size = whole.size

    def _close(self) -> None:
        if self._open is not None and self._open.size:
            self._closed.append(self._open)
        self._open = None

    def finish(self) -> None:
        with self.lock:
            if self._open is not None and self._tail.size:
                self._open.add(self._tail)
            self._tail = np.zeros(0, np.float32)
            self._close()
            self._finished = True

    def next_work(self, load: float) -> Work | None:
        with self.lock:
            if self._closed:
                return Work.FINAL
            utterance = self._open
            if utterance is None or not self.options.partials:
                return None
            interval = min(
                self.options.partial_interval_s * load, self.options.max_partial_interval_s
            )
            fresh = utterance.size - utterance.decoded_size
            if (
                utterance.size >= self.options.min_partial_s * SAMPLE_RATE
                and fresh >= interval * SAMPLE_RATE
            ):
                return Work.PARTIAL
            return None

    @property
    def done(self) -> bool:
        with self.lock:
            return self._finished and not self._closed and self._open is None

    @property
    def backlog_seconds(self) -> float:
        with self.lock:
            return sum(u.size for u in self._closed) / SAMPLE_RATE

    def run(self, work: Work) -> list[Hypothesis]:
        began = time.perf_counter()
        try:
            return self._final() if work == Work.FINAL else self._partial()
        finally:
            self.stats.decodes += 1
            self.stats.decode_seconds += time.perf_counter() - began

    def _final(self) -> list[Hypothesis]:
        with self.lock:
            if not self._closed:
                return []
            utterance = self._closed.popleft()
            samples = utterance.samples()
        start = utterance.start / SAMPLE_RATE
        end = (utterance.start + samples.size) / SAMPLE_RATE
        if not self.engine.holds_speech(utterance, samples):
            self.stats.rejected_utterances += 1
            return []
        text, words, language = self.engine.decode(samples, start, self.language)
        if not text and not utterance.partials_sent:
            return []
        if text and not words:
            words = [RecognizedWord(text, start, end, 0.0)]
        return [
            Hypothesis(
                "final", utterance.index, text, start, end, tuple(words), language, len(text)
            )
        ]

    def _partial(self) -> list[Hypothesis]:
        with self.lock:
            utterance = self._open
            if utterance is None:
                return []
            samples = utterance.samples()
            utterance.decoded_size = samples.size
        start = utterance.start / SAMPLE_RATE
        if not self.engine.holds_speech(utterance, samples):
            return []
        text, _, language = self.engine.decode(samples, start, self.language, final=False)
        words = cut_repetition(text.split())
        committed = utterance.committed
        agreed = 0
        for mine, previous in zip(words, utterance.previous, strict=False):
            if _norm(mine) != _norm(previous):
                break
            agreed += 1
        if agreed > len(committed):
            committed[:] = words[:agreed]
        shown = committed + words[len(committed) :]
        utterance.previous = words
        if not shown:
            return []
        utterance.partials_sent += 1
        stable = len(" ".join(committed))
        end = start + samples.size / SAMPLE_RATE
        return [
            Hypothesis(
                "interim", utterance.index, " ".join(shown), start, end, (), language, stable
            )
        ]
