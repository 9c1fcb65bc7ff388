"""Whisper (faster-whisper / CTranslate2) made streaming: VAD cuts utterances, the open
utterance is re-decoded at a cadence for partials, the closed one decoded once for its final.

Partials are cheap: beam 3, on the clip encoded at its own length (:mod:`engines.whisper_align`),
the speaker's previous finals as a text prompt. Finals are decoded the way the offline model
is called: the whole 30 s window, beam search, hearing the speaker's previous finals (their
audio before the clip, their text forced), with guards against decode loops (repeated
phrases, compression ratio, more words than the audio can hold, no-speech probability): a
guarded final is decoded again with repeated n-grams banned, then cut at the repetition.
Partials keep a stable prefix: words three consecutive decodes agree on (not the last word of
a decode, which may hear a word cut off) are committed and never change, punctuation and case
included. Every later decode of the utterance, partial or final, is forced to begin with the
committed words and goes on from them.
The partial cadence is in audio seconds and stretches with the scheduler's ``load``.
"""

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
from engines.cpu_threads import build_at_lower_priority, can_lower, one_blas_thread
from engines.silero import SileroGate
from engines.vad import FRAME, SpeechGate, VadConfig, pcm16
from engines.whisper_align import encode, timed_words

MAX_WORDS_PER_S = 5.0
MAX_COMPRESSION = 2.4
CONTEXT_S = 12.0
CLOSING_MARKS = ".,!?;:"
CONTEXT_TOKENS = 120
# at ``max_utterance_s`` the cut goes to the quietest frame of this last stretch
CUT_SEARCH_S = 2.0
# the last words of a partial decode hear a word cut off mid-way: never committed from there
HOLD_BACK_WORDS = 1
# a word is committed when this many consecutive partial decodes agree on it
AGREEING = 3
# nothing is committed before this much of the utterance is heard (its first word settles)
MIN_COMMIT_S = 1.5
# a decode with fewer words than this per second of audio skipped some (often the first
# words of a turn): nothing is committed from it
MIN_COMMIT_WORDS_PER_S = 1.2


@dataclass
class WhisperOptions:
    partial_interval_s: float = 0.6
    max_partial_interval_s: float = 3.0
    max_utterance_s: float = 12.0
    min_partial_s: float = 0.4
    vad: VadConfig = field(default_factory=VadConfig)
    final_beam_size: int = 5
    partial_beam_size: int = 3
    # partials hear the speaker's previous finals as audio, like finals (about 3x their
    # cost), instead of as a text prompt
    partial_context_audio: bool = False
    # finals encode at least this much (what they hear, padded with silence; 30 = Whisper's
    # whole window, as the offline model does): the encoder is most of a final's cost
    final_window_s: float = 30.0
    # after this much silence (before the endpoint's ``vad.min_silence_s``) the final is
    # decoded ahead on what it would hear; kept if the endpoint follows (0 = off)
    final_ahead_s: float = 0.21
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
    earlier: list[list[str]] = field(default_factory=list)
    partials_sent: int = 0
    # samples its final hears if the pause now under way turns out to be its endpoint
    ending: int = 0
    ahead: "_Ahead | None" = None

    @property
    def wants_ahead(self) -> bool:
        return bool(self.ending) and (self.ahead is None or self.ahead.size != self.ending)

    def add(self, frame: np.ndarray) -> None:
        self.chunks.append(frame)
        self.size += frame.size

    def samples(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)


@dataclass(frozen=True)
class _Ahead:
    """A final's free decode made before its endpoint, on the first ``size`` samples
    (``heard`` None: the gate heard no speech in them)."""

    size: int
    heard: "Heard | None"
    text: str
    words: list[RecognizedWord]
    language: str | None


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


@dataclass(frozen=True)
class Context:
    """A speaker's latest finals: their audio (at most ``CONTEXT_S``) and text."""

    samples: np.ndarray
    text: str

    @staticmethod
    def keep(earlier: "Context | None", samples: np.ndarray, text: str) -> "Context":
        """``earlier`` with one more final, trimmed to whole finals that fit the bounds."""
        finals = [*(earlier.finals if earlier else ()), (samples, text)]
        while len(finals) > 1 and (
            sum(s.size for s, _ in finals) > CONTEXT_S * SAMPLE_RATE
            or sum(len(t) for _, t in finals) > CONTEXT_TOKENS * 3
        ):
            finals.pop(0)
        if finals[0][0].size > CONTEXT_S * SAMPLE_RATE:
            finals = []
        glued = np.concatenate([s for s, _ in finals]) if finals else np.zeros(0, np.float32)
        return Context(glued, " ".join(t for _, t in finals), tuple(finals))

    finals: tuple[tuple[np.ndarray, str], ...] = ()


@dataclass(frozen=True)
class Heard:
    """One clip as the encoder heard it: ``before`` samples of context audio, then ``clip``
    samples of the clip; ``content`` feature frames of it are not padding."""

    final: bool
    clip: int
    before: int
    encoded: ctranslate2.StorageView
    content: int


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
        final_model_path: Path | None = None,
        partial_nice: int = 0,
        final_cpu_threads: int | None = None,
    ) -> None:
        """``final_model_path``: a stronger model for finals (two-pass live); partials and
        commits stay on the fast one. ``partial_nice``: partials decode that much nicer than
        finals (Linux). ``final_cpu_threads``: CPU threads of one final decode (None: as
        ``cpu_threads``)."""
        self.options = options or WhisperOptions()
        self.language = language
        one_blas_thread()

        def load(path: Path, threads: int = cpu_threads) -> WhisperModel:
            return WhisperModel(
                str(path),
                device=device,
                compute_type=compute_type,
                cpu_threads=threads,
                num_workers=parallel,
            )

        final_threads = final_cpu_threads or cpu_threads
        self.final_model = load(final_model_path or model_path, final_threads)
        if can_lower(partial_nice):
            # CTranslate2 decodes on the worker threads a model starts when it loads, not on
            # the caller's thread: partials get their own copy, loaded on a nicer thread.
            self.model = build_at_lower_priority(lambda: load(model_path), partial_nice)
        elif final_model_path or final_threads != cpu_threads:
            self.model = load(model_path)
        else:
            self.model = self.final_model
        self.gate = SileroGate.packaged(parallel) if self.options.neural_gate else None
        self._tokenizers: dict[tuple[int, str], Tokenizer] = {}
        multilingual = bool(self.model.model.is_multilingual)
        self.info = EngineInfo(
            name=name, kind="whisper", languages=("*",) if multilingual else ("en",)
        )

    def create_stream(self, language: str | None = None) -> "WhisperStream":
        return WhisperStream(self, language or self.language)

    def _tokenizer(self, model: WhisperModel, language: str) -> Tokenizer:
        """One per model and language, built once: every decode needs one."""
        key = (id(model), language)
        if key not in self._tokenizers:
            self._tokenizers[key] = Tokenizer(
                model.hf_tokenizer,
                model.model.is_multilingual,
                task="transcribe",
                language=language,
            )
        return self._tokenizers[key]

    def hear(
        self, samples: np.ndarray, final: bool = True, context: "Context | None" = None
    ) -> Heard:
        """The encoder's view of ``samples``, after ``context``'s audio where the decode hears
        it (finals; partials with ``partial_context_audio``)."""
        model = self.final_model if final else self.model
        before = context.samples if context is not None else np.zeros(0, np.float32)
        if before.size + samples.size > 29 * SAMPLE_RATE or not (
            final or self.options.partial_context_audio
        ):
            before = before[:0]
        heard = np.concatenate((before, samples)) if before.size else samples
        if not final:
            encoded, content = encode(model, heard)
            return Heard(final, samples.size, before.size, encoded, content)
        least = int(self.options.final_window_s * SAMPLE_RATE)
        window = min(30 * SAMPLE_RATE, max(least, heard.size + SAMPLE_RATE))
        padded = np.zeros(max(heard.size, window), np.float32)
        padded[: heard.size] = heard
        encoded, _ = encode(model, padded)
        content = min(3000, int(np.ceil(heard.size / 160)))
        return Heard(final, samples.size, before.size, encoded, content)

    def decode(
        self,
        samples: np.ndarray,
        offset: float,
        language: str | None,
        final: bool = True,
        prefix: str = "",
        context: "Context | None" = None,
        heard: "Heard | None" = None,
    ) -> tuple[str, list[RecognizedWord], str | None]:
        """Text, words (finals only; times shifted by ``offset``) and language of one clip.
        The decode goes on from ``prefix`` (text already committed: the result begins with
        it). The decode hears ``context`` first (the speaker's latest finals: their audio
        before the clip in the same window, their text forced), as the offline model hears a
        speaker's earlier speech glued before the current turn. ``heard``: this clip already
        encoded by :meth:`hear` with the same ``final`` and ``context`` (a second decode of
        it skips the encoder, most of a final's cost)."""
        seconds = samples.size / SAMPLE_RATE
        model = self.final_model if final else self.model
        if heard is None or heard.final != final or heard.clip != samples.size:
            heard = self.hear(samples, final, context)
        encoded = heard.encoded
        if language is None and model.model.is_multilingual:
            language = model.model.detect_language(encoded)[0][0][0][2:-2]
        tokenizer = self._tokenizer(model, language or "en")
        said = tokenizer.encode(" " + context.text) if heard.before and context else []
        forced = tokenizer.encode(" " + prefix.strip()) if prefix.strip() else []
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps, *said, *forced]
        if not final and not heard.before and context is not None and context.text:
            # Forced tokens after <|notimestamps|> are decoded one step at a time; a previous
            # text prompt goes through the decoder at once: a third of the cost of hearing it.
            previous = tokenizer.encode(" " + context.text)[-CONTEXT_TOKENS:]
            prompt = [tokenizer.sot_prev, *previous, *prompt]
        tokens, text, speech = self._generate(model, encoded, tokenizer, prompt, final, seconds)
        if final and speech and looks_looped(text, seconds):
            tokens, text, speech = self._generate(
                model, encoded, tokenizer, prompt, final, seconds, 3
            )
            if looks_looped(text, seconds):
                kept = cut_repetition(text.split())[: int(MAX_WORDS_PER_S * seconds) + 3]
                text = " ".join(kept)
                tokens = tokenizer.encode(" " + text) if text else []
        if said and not forced and text[:1] in CLOSING_MARKS:
            # the context's text has no closing mark: the decode starts by adding one
            text = text.lstrip(CLOSING_MARKS + " ")
            tokens = tokenizer.encode(" " + text) if text else []
        if forced:
            text = " ".join(filter(None, (prefix.strip(), text)))
            tokens = forced + tokens
        elif not speech:
            return "", [], language
        if not final or not tokens:
            return text, [], language
        shift = offset - heard.before / SAMPLE_RATE
        words = timed_words(
            model, tokenizer, said + tokens, encoded, heard.content, shift, len(said)
        )
        return text, [w for w in words if w.end > offset], language

    def _generate(
        self,
        model: WhisperModel,
        encoded: ctranslate2.StorageView,
        tokenizer: Tokenizer,
        prompt: list[int],
        final: bool,
        seconds: float,
        no_repeat: int = 0,
    ) -> tuple[list[int], str, bool]:
        # speech rarely exceeds 6 tokens a second; a cap stops short-clip repetition loops.
        # The result repeats the forced tokens after <|notimestamps|>, and they count too.
        forced = prompt[prompt.index(tokenizer.no_timestamps) + 1 :]
        budget = len(prompt) + len(forced) + 8 + int(8 * seconds)
        result = model.model.generate(
            encoded,
            [prompt],
            beam_size=self.options.final_beam_size if final else self.options.partial_beam_size,
            max_length=min(448, budget),
            no_repeat_ngram_size=no_repeat if final else 4,
            suppress_blank=True,
            suppress_tokens=[-1],
            return_scores=True,
            return_no_speech_prob=True,
        )[0]
        tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
        if forced and tokens[: len(forced)] == forced:
            tokens = tokens[len(forced) :]  # the result repeats a forced prefix
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
        self._context: Context | None = None
        self._partial_step = self._step(1.0)
        # the endpoint keeps ``tail`` frames of the silence after the last voiced one
        self._tail_frames = self._gate.onset_frames // 2
        self._ahead_frames = (
            max(self._tail_frames, round(self.options.final_ahead_s * SAMPLE_RATE / FRAME))
            if self.options.final_ahead_s > 0
            else 0
        )

    def accept(self, samples: np.ndarray) -> None:
        with self.lock:
            buffer = np.concatenate((self._tail, samples)) if self._tail.size else samples
            whole = buffer.size - buffer.size % FRAME
            if whole:
                # converted and checked for silence once per push, not once per frame
                pcm = pcm16(buffer[:whole])
                zero = np.logical_not(buffer[:whole].reshape(-1, FRAME).any(axis=1)).tolist()
                step = 2 * FRAME
                for index, begin in enumerate(range(0, whole, FRAME)):
                    event = self._gate.pcm_frame(
                        pcm[index * step : (index + 1) * step], zero[index]
                    )
                    self._frame(buffer[begin : begin + FRAME], event)
            self._tail = buffer[whole:].copy()

    def _frame(self, frame: np.ndarray, event: str | None) -> None:
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
            silent = self._gate.silent_frames
            if silent == 0:
                self._open.ending = 0
            elif silent == self._ahead_frames and event is None:
                self._open.ending = self._open.size - (silent - self._tail_frames) * FRAME
            if event == "end":
                keep = max(0, self._gate.silent_frames - self._tail_frames)
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
            if utterance is not None and utterance.wants_ahead:
                return Work.FINAL
            if utterance is None or not self.options.partials:
                return None
            self._partial_step = self._step(load)
            if (
                utterance.size >= self.options.min_partial_s * SAMPLE_RATE
                and self._partial_cut(utterance) > utterance.decoded_size
            ):
                return Work.PARTIAL
            return None

    def _step(self, load: float) -> int:
        seconds = min(self.options.partial_interval_s * load, self.options.max_partial_interval_s)
        return max(1, round(seconds * SAMPLE_RATE / FRAME)) * FRAME

    def _partial_cut(self, utterance: _Utterance) -> int:
        """Partials decode the utterance up to the latest multiple of the cadence: the same
        input whatever the feed speed, as long as decoding keeps up."""
        return utterance.size // self._partial_step * self._partial_step

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

    def _decode_ahead(self) -> list[Hypothesis]:
        """The open utterance's final decoded during the pause that may be its endpoint: a
        final is that decode's wait shorter when the endpoint comes, one decode wasted when
        speech goes on."""
        with self.lock:
            utterance = self._open
            if utterance is None or not utterance.wants_ahead:
                return []
            samples = utterance.samples()[: utterance.ending]
        ahead = _Ahead(samples.size, None, "", [], None)
        if self.engine.holds_speech(utterance, samples):
            start = utterance.start / SAMPLE_RATE
            heard = self.engine.hear(samples, context=self._context)
            text, words, language = self.engine.decode(
                samples, start, self.language, context=self._context, heard=heard
            )
            ahead = _Ahead(samples.size, heard, text, words, language)
        with self.lock:
            utterance.ahead = ahead
            self.stats.finals_ahead += 1
        return []

    def _final(self) -> list[Hypothesis]:
        with self.lock:
            utterance = self._closed.popleft() if self._closed else None
        if utterance is None:
            return self._decode_ahead()
        samples = utterance.samples()
        start = utterance.start / SAMPLE_RATE
        end = (utterance.start + samples.size) / SAMPLE_RATE
        if not self.engine.holds_speech(utterance, samples):
            self.stats.rejected_utterances += 1
            return []
        ahead = utterance.ahead
        if ahead is not None and ahead.heard is not None and ahead.size == samples.size:
            heard, text, words, language = ahead.heard, ahead.text, ahead.words, ahead.language
            self.stats.finals_ahead_kept += 1
        else:
            heard = self.engine.hear(samples, context=self._context)
            text, words, language = self.engine.decode(
                samples, start, self.language, context=self._context, heard=heard
            )
        if utterance.committed:
            text, words, language = self._keep_committed(
                utterance.committed, text, words, language, samples, start, heard
            )
        if not text and not utterance.partials_sent:
            return []
        if text and not words:
            words = [RecognizedWord(text, start, end, 0.0)]
        if text:
            self._context = Context.keep(self._context, samples, text)
        stable = len(text)
        return [
            Hypothesis("final", utterance.index, text, start, end, tuple(words), language, stable)
        ]

    def _keep_committed(
        self,
        committed: list[str],
        text: str,
        words: list[RecognizedWord],
        language: str | None,
        samples: np.ndarray,
        start: float,
        heard: Heard,
    ) -> tuple[str, list[RecognizedWord], str | None]:
        """The final with the committed words as its exact beginning: the free decode's own
        words after them where it heard the same words (punctuation and case aside), else a
        decode forced to go on from them, on the encoder output the free decode used (forcing
        costs a second beam search and reads less naturally, so it is only the fallback)."""
        head = len(committed)
        if [_norm(w.word) for w in words[:head]] == [_norm(w) for w in committed]:
            kept = [
                RecognizedWord(word, w.start, w.end, w.confidence)
                for word, w in zip(committed, words, strict=False)
            ]
            merged = kept + words[head:]
            return " ".join(w.word for w in merged), merged, language
        return self.engine.decode(
            samples,
            start,
            language,
            prefix=" ".join(committed),
            context=self._context,
            heard=heard,
        )

    def _partial(self) -> list[Hypothesis]:
        with self.lock:
            utterance = self._open
            if utterance is None:
                return []
            cut = self._partial_cut(utterance)
            if cut <= utterance.decoded_size:
                return []
            samples = utterance.samples()[:cut]
            utterance.decoded_size = cut
        start = utterance.start / SAMPLE_RATE
        if not self.engine.holds_speech(utterance, samples):
            return []
        committed = utterance.committed
        text, _, language = self.engine.decode(
            samples, start, self.language, False, " ".join(committed), self._context
        )
        fresh = cut_repetition(text.split())[len(committed) :]
        agreed = 0
        heard = samples.size / SAMPLE_RATE - 0.5
        sparse = len(committed) + len(fresh) < MIN_COMMIT_WORDS_PER_S * heard
        if (
            samples.size >= MIN_COMMIT_S * SAMPLE_RATE
            and not sparse
            and len(utterance.earlier) >= AGREEING - 1
        ):
            decodes = [d[:-HOLD_BACK_WORDS] for d in [*utterance.earlier, fresh]]
            for column in zip(*decodes, strict=False):
                if len({_norm(word) for word in column}) != 1:
                    break
                agreed += 1
        committed.extend(fresh[:agreed])
        utterance.earlier = [d[agreed:] for d in [*utterance.earlier, fresh]][-(AGREEING - 1) :]
        shown = committed + fresh[agreed:]
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
