"""Whisper (faster-whisper / CTranslate2) made streaming: VAD cuts utterances, the open
utterance is re-decoded at a cadence for partials, the closed one decoded once for its final.

Partials are cheap: greedy, on the clip encoded at its own length (:mod:`engines.whisper_align`).
Finals are decoded the way the offline model is called: the whole 30 s window, beam search,
after the speaker's previous final as prompt, with guards against decode loops (repeated
phrases, compression ratio, more words than the audio can hold, no-speech probability): a
guarded final is decoded again with repeated n-grams banned, then cut at the repetition.
Partials keep a stable prefix: words two consecutive decodes agree on are committed and
never change, punctuation and case included; the final begins with that prefix and goes on
with the final decode's words after the point where it matches the prefix's last words.
The partial cadence is in audio seconds and stretches with the scheduler's ``load``.
"""

import difflib
import re
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer

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
from engines.whisper_align import encode, timed_words

MAX_WORDS_PER_S = 5.0
MAX_COMPRESSION = 2.4
PROMPT_TOKENS = 96
# at ``max_utterance_s`` the cut goes to the quietest frame of this last stretch
CUT_SEARCH_S = 2.0


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


def cut_repetition(words: list[str]) -> list[str]:
    """Drop a decode loop: from the first phrase of 2-10 words that repeats back to back, or
    the point where a phrase of 4+ words comes back a second time."""
    keys = [_norm(w) for w in words]
    for begin in range(len(keys)):
        for size in range(2, 11):
            if (
                begin + 2 * size <= len(keys)
                and keys[begin : begin + size] == keys[begin + size : begin + 2 * size]
            ):
                return words[: begin + size]
    seen: dict[tuple[str, ...], int] = {}
    for begin in range(len(keys) - 3):
        gram = tuple(keys[begin : begin + 4])
        if gram in seen and seen[gram] + 4 <= begin:
            return words[:begin]
        seen.setdefault(gram, begin)
    return words


def looks_looped(text: str, seconds: float) -> bool:
    """The decode-loop signs Whisper's own fallback looks for, plus a cut repetition and more
    words than ``seconds`` of speech can hold."""
    words = text.split()
    if not words:
        return False
    compressed = len(text.encode()) / max(1, len(zlib.compress(text.encode())))
    return (
        compressed > MAX_COMPRESSION
        or len(cut_repetition(words)) < len(words)
        or len(words) > MAX_WORDS_PER_S * seconds + 3
    )


def continue_prefix(committed: list[str], words: list[str]) -> int:
    """Index in ``words`` (a new decode of the same utterance) where it goes on past the
    ``committed`` prefix: just after its match of the prefix's words, looked for among its
    first words only (the prefix's length when nothing matches)."""
    if not committed:
        return 0
    head = [_norm(w) for w in words[: len(committed) + 3]]
    matcher = difflib.SequenceMatcher(None, [_norm(w) for w in committed], head, autojunk=False)
    last = max((m.b + m.size for m in matcher.get_matching_blocks() if m.size), default=0)
    return last or min(len(committed), len(words))


def _after_prefix(
    committed: list[str], words: list[RecognizedWord], start: float, end: float
) -> list[RecognizedWord]:
    """The committed words (their times spread over the final words they match) followed by
    the final's words past them."""
    cut = continue_prefix(committed, [w.word for w in words])
    matched = words[:cut]
    low = matched[0].start if matched else start
    high = matched[-1].end if matched else (words[0].start if words else end)
    step = (high - low) / len(committed)
    head = [
        RecognizedWord(word, round(low + i * step, 3), round(low + (i + 1) * step, 3), 1.0)
        for i, word in enumerate(committed)
    ]
    return head + words[cut:]


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

    def _prompt(self, tokenizer: Tokenizer, previous: str) -> list[int]:
        context = tokenizer.encode(" " + previous.strip())[-PROMPT_TOKENS:] if previous else []
        head = [tokenizer.sot_prev, *context] if context else []
        return [*head, *tokenizer.sot_sequence, tokenizer.no_timestamps]

    def decode(
        self,
        samples: np.ndarray,
        offset: float,
        language: str | None,
        final: bool = True,
        previous: str = "",
    ) -> tuple[str, list[RecognizedWord], str | None]:
        """Text, words (finals only; times shifted by ``offset``) and language of one clip.
        ``previous`` (the speaker's last final) prompts a final decode."""
        seconds = samples.size / SAMPLE_RATE
        if final:
            padded = np.zeros(max(samples.size, 30 * SAMPLE_RATE), np.float32)
            padded[: samples.size] = samples
            encoded, _ = encode(self.model, padded)
            content = min(3000, int(np.ceil(seconds * 100)))
        else:
            encoded, content = encode(self.model, samples)
        if language is None and self.model.model.is_multilingual:
            language = self.model.model.detect_language(encoded)[0][0][0][2:-2]
        tokenizer = self._tokenizer(language or "en")
        prompt = self._prompt(tokenizer, previous if final else "")
        tokens, text, speech = self._generate(encoded, tokenizer, prompt, final, seconds)
        if final and speech and looks_looped(text, seconds):
            tokens, text, speech = self._generate(encoded, tokenizer, prompt, final, seconds, 3)
            if looks_looped(text, seconds):
                kept = cut_repetition(text.split())[: int(MAX_WORDS_PER_S * seconds) + 3]
                text = " ".join(kept)
                tokens = tokenizer.encode(" " + text)
        if not speech:
            return "", [], language
        if not final or not tokens:
            return text, [], language
        return text, timed_words(self.model, tokenizer, tokens, encoded, content, offset), language

    def _generate(
        self,
        encoded: ctranslate2.StorageView,
        tokenizer: Tokenizer,
        prompt: list[int],
        final: bool,
        seconds: float,
        no_repeat: int = 0,
    ) -> tuple[list[int], str, bool]:
        # speech rarely exceeds 6 tokens a second; a cap stops short-clip repetition loops
        budget = 8 + int(8 * seconds)
        result = self.model.model.generate(
            encoded,
            [prompt],
            beam_size=self.options.final_beam_size if final else 1,
            max_length=min(448 - len(prompt), budget) + len(prompt),
            no_repeat_ngram_size=no_repeat if final else 4,
            suppress_blank=True,
            suppress_tokens=[-1],
            return_scores=True,
            return_no_speech_prob=True,
        )[0]
        tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
        speech = not (result.no_speech_prob > 0.6 and result.scores[0] < -1.0)
        return tokens, str(tokenizer.decode(tokens)).strip(), speech

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
        self._previous_final = ""

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
                self._split_open()
        self._position += FRAME

    def _split_open(self) -> None:
        """Close the over-long open utterance at the quietest frame of its last
        ``CUT_SEARCH_S`` (a breath between words, not mid-word); the rest opens the next."""
        assert self._open is not None
        samples = self._open.samples()
        search = min(samples.size, int(CUT_SEARCH_S * SAMPLE_RATE)) // FRAME * FRAME
        tail = samples[samples.size - search :].reshape(-1, FRAME)
        cut = samples.size - search + int(np.argmin(np.square(tail).mean(axis=1))) * FRAME
        head = _Utterance(self._open.index, self._open.start, confirmed=self._open.confirmed)
        head.add(samples[:cut])
        head.committed = self._open.committed
        head.partials_sent = self._open.partials_sent
        self._closed.append(head)
        self._open = _Utterance(self._count, self._open.start + cut, confirmed=head.confirmed)
        self._open.add(samples[cut:])
        self._count += 1

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
        text, words, language = self.engine.decode(
            samples, start, self.language, previous=self._previous_final
        )
        committed = utterance.committed
        if committed:
            words = _after_prefix(committed, words, start, end)
            text = " ".join(w.word for w in words)
        if not text and not utterance.partials_sent:
            return []
        if text and not words:
            words = [RecognizedWord(text, start, end, 0.0)]
        self._previous_final = text
        stable = len(text)
        return [
            Hypothesis("final", utterance.index, text, start, end, tuple(words), language, stable)
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
        fresh = words[continue_prefix(committed, words) :]
        agreed = 0
        for mine, previous in zip(fresh, utterance.previous, strict=False):
            if _norm(mine) != _norm(previous):
                break
            agreed += 1
        committed.extend(fresh[:agreed])
        utterance.previous = fresh[agreed:]
        shown = committed + utterance.previous
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
