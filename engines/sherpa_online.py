"""True streaming recognition with sherpa-onnx's OnlineRecognizer (transducer, paraformer,
zipformer2 CTC), with its endpoint detection cutting utterances."""

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import sherpa_onnx

from engines.base import (
    SAMPLE_RATE,
    Engine,
    EngineError,
    EngineInfo,
    EngineStream,
    Hypothesis,
    ModelNotFoundError,
    RecognizedWord,
    Work,
)
from engines.models import ModelKind, ResolvedModel, catalog_languages, sherpa_files
from engines.onnx_metadata import read_metadata

_ZIPFORMER2_KEYS = (
    "encoder_dims",
    "query_head_dims",
    "value_head_dims",
    "num_heads",
    "num_encoder_layers",
    "cnn_module_kernels",
    "left_context_len",
    "T",
    "decode_chunk_len",
)
_ENCODER_KEYS: dict[str, tuple[str, ...]] = {
    "zipformer2": _ZIPFORMER2_KEYS,
    "zipformer": (
        "encoder_dims",
        "attention_dims",
        "num_encoder_layers",
        "cnn_module_kernels",
        "left_context_len",
        "T",
        "decode_chunk_len",
    ),
    "conformer": (),
    "ebranchformer": (),
    "lstm": (),
}
TAIL_PADDING_S = 0.8
MAX_TOKEN_S = 0.6
WORD_MARK = "▁"


@dataclass(frozen=True)
class _Token:
    text: str
    start: float
    log_prob: float | None


def _words(tokens: Sequence[_Token], segment_end: float) -> tuple[RecognizedWord, ...]:
    """BPE tokens -> words: a token starting with "▁" or a space opens a new word; a token
    lasts until the next one starts, at most ``MAX_TOKEN_S`` and never past the segment end."""
    groups: list[list[tuple[_Token, float]]] = []
    for index, token in enumerate(tokens):
        following = tokens[index + 1].start if index + 1 < len(tokens) else segment_end
        end = max(token.start, min(following, token.start + MAX_TOKEN_S, segment_end))
        opens_word = token.text.startswith((WORD_MARK, " ")) or not groups
        if opens_word:
            groups.append([])
        groups[-1].append((token, end))
    words = []
    for group in groups:
        text = "".join(token.text for token, _ in group).replace(WORD_MARK, " ").strip()
        if not text:
            continue
        log_probs = [token.log_prob for token, _ in group if token.log_prob is not None]
        confidence = float(np.exp(np.mean(log_probs))) if log_probs else 1.0
        start, end = round(group[0][0].start, 3), round(group[-1][1], 3)
        words.append(RecognizedWord(text, start, end, round(min(1.0, confidence), 3)))
    return tuple(words)


def check_metadata(files: dict[str, Path], kind: ModelKind) -> None:
    """Refuse models that sherpa-onnx would end the process over (a missing metadata key)."""

    def require(role: str, keys: Sequence[str]) -> dict[str, str]:
        metadata = read_metadata(files[role])
        missing = [key for key in keys if key not in metadata]
        if missing:
            raise EngineError(
                f"{files[role].name} lacks the metadata {', '.join(missing)} that sherpa-onnx needs"
            )
        return metadata

    if kind == "sherpa-transducer":
        model_type = require("encoder", ("model_type",))["model_type"]
        if model_type not in _ENCODER_KEYS:
            raise EngineError(f"{files['encoder'].name}: unsupported model_type {model_type!r}")
        require("encoder", _ENCODER_KEYS[model_type])
        require("decoder", ("vocab_size", "context_size"))
        read_metadata(files["joiner"])
    elif kind == "sherpa-zipformer2-ctc":
        require("model", _ZIPFORMER2_KEYS)
    else:
        for role in ("encoder", "decoder"):
            read_metadata(files[role])


class SherpaOnlineStream(EngineStream):
    def __init__(self, engine: "SherpaOnlineEngine", language: str | None) -> None:
        super().__init__()
        self._engine = engine
        self._language = language
        self._stream = engine.recognizer.create_stream()
        self._pending: list[np.ndarray] = []
        self._pending_samples = 0
        self._input_finished = False
        # worker-side state, touched only inside run()/run_batch()
        self._fed_samples = 0
        self._flushed = False
        self._done = False
        self._utterance = 0
        self._last_text = ""

    # ---- event-loop side --------------------------------------------------------------

    def accept(self, samples: np.ndarray) -> None:
        with self.lock:
            if self._input_finished:
                raise EngineError("stream input already finished")
            self._pending.append(samples)
            self._pending_samples += samples.size
            overflow = self._pending_samples - self._engine.max_buffer_samples
            while overflow > 0 and len(self._pending) > 1:
                dropped = self._pending.pop(0)
                self._pending_samples -= dropped.size
                self.stats.dropped_samples += dropped.size
                overflow -= dropped.size

    def finish(self) -> None:
        with self.lock:
            self._input_finished = True

    def next_work(self, load: float) -> Work | None:
        with self.lock:
            if self._done:
                return None
            if self._input_finished:
                return Work.FINAL
            if self._pending_samples >= self._engine.partial_samples * max(1.0, load):
                return Work.PARTIAL
        return None

    @property
    def done(self) -> bool:
        return self._done

    # ---- worker side ------------------------------------------------------------------

    def run(self, work: Work) -> list[Hypothesis]:
        return self._engine.run_batch([(self, work)])[0]

    def _feed(self) -> None:
        with self.lock:
            chunks, self._pending, self._pending_samples = self._pending, [], 0
            finished = self._input_finished
        for chunk in chunks:
            self._stream.accept_waveform(SAMPLE_RATE, chunk)
            self._fed_samples += chunk.size
        if finished and not self._flushed:
            self._flushed = True
            self._stream.accept_waveform(
                SAMPLE_RATE, np.zeros(int(TAIL_PADDING_S * SAMPLE_RATE), np.float32)
            )
            self._stream.input_finished()

    @property
    def _audio_end(self) -> float:
        return self._fed_samples / SAMPLE_RATE

    def _hypothesis(self, kind: Literal["interim", "final"]) -> Hypothesis | None:
        recognizer = self._engine.recognizer
        result = recognizer.get_result_all(self._stream)
        text = result.text.replace(WORD_MARK, " ").strip()
        if kind == "interim" and text == self._last_text:
            return None
        self._last_text = text
        if not text:
            return None
        offset = float(result.start_time)
        tokens = list(result.tokens)
        stamps = list(result.timestamps)
        probs = list(result.ys_probs)
        words: tuple[RecognizedWord, ...] = ()
        if tokens and len(stamps) == len(tokens):
            parsed = [
                _Token(
                    token,
                    min(offset + float(stamp), self._audio_end),
                    probs[i] if len(probs) == len(tokens) else None,
                )
                for i, (token, stamp) in enumerate(zip(tokens, stamps, strict=True))
            ]
            words = _words(parsed, self._audio_end)
        start = words[0].start if words else round(offset, 3)
        end = words[-1].end if words else round(self._audio_end, 3)
        last_space = text.rfind(" ")
        stable = 0 if self._engine.info.kind == "sherpa-paraformer" else max(0, last_space)
        return Hypothesis(
            kind=kind,
            utterance=self._utterance,
            text=text,
            start=start,
            end=end,
            words=words,
            language=self._language or self._engine.only_language,
            stable_chars=len(text) if kind == "final" else stable,
        )

    def _final(self) -> list[Hypothesis]:
        hyp = self._hypothesis("final")
        self._last_text = ""
        if hyp is None:
            return []
        self._utterance += 1
        return [hyp]


class SherpaOnlineEngine(Engine):
    """One loaded sherpa-onnx streaming model; streams of it are decoded in batches."""

    def __init__(
        self,
        model: ResolvedModel,
        *,
        num_threads: int = 1,
        endpoint_rule1_s: float = 2.4,
        endpoint_rule2_s: float = 1.2,
        endpoint_rule3_s: float = 20.0,
        provider: str = "cpu",
        max_batch: int = 8,
        partial_interval_s: float = 0.1,
        max_buffer_s: float = 30.0,
    ) -> None:
        if model.kind not in ("sherpa-transducer", "sherpa-paraformer", "sherpa-zipformer2-ctc"):
            raise EngineError(
                f"{model.name} is a {model.kind} model, not a sherpa-onnx streaming one"
            )
        if not model.present:
            raise ModelNotFoundError(
                model.name, f"not present at {model.path} (source {model.source})"
            )
        paths = sherpa_files(model.path, model.kind)
        check_metadata(paths, model.kind)
        files = {role: str(path) for role, path in paths.items()}
        common = {
            "tokens": files["tokens"],
            "num_threads": num_threads,
            "enable_endpoint_detection": True,
            "rule1_min_trailing_silence": endpoint_rule1_s,
            "rule2_min_trailing_silence": endpoint_rule2_s,
            "rule3_min_utterance_length": endpoint_rule3_s,
            "provider": provider,
        }
        try:
            if model.kind == "sherpa-transducer":
                self.recognizer = sherpa_onnx.OnlineRecognizer.from_transducer(
                    encoder=files["encoder"],
                    decoder=files["decoder"],
                    joiner=files["joiner"],
                    **common,
                )
            elif model.kind == "sherpa-paraformer":
                self.recognizer = sherpa_onnx.OnlineRecognizer.from_paraformer(
                    encoder=files["encoder"], decoder=files["decoder"], **common
                )
            else:
                self.recognizer = sherpa_onnx.OnlineRecognizer.from_zipformer2_ctc(
                    model=files["model"], **common
                )
        except (RuntimeError, ValueError) as exc:
            raise EngineError(
                f"sherpa-onnx could not load {model.name} from {model.path}: {exc}"
            ) from exc
        self.model = model
        languages = catalog_languages(model.name)
        self.only_language = languages[0] if len(languages) == 1 else None
        self.partial_samples = int(partial_interval_s * SAMPLE_RATE)
        self.max_buffer_samples = int(max_buffer_s * SAMPLE_RATE)
        self.info = EngineInfo(
            name=model.name,
            kind=model.kind,
            languages=languages,
            max_batch=max_batch,
        )

    def create_stream(self, language: str | None = None) -> SherpaOnlineStream:
        if language and self.info.languages and language not in self.info.languages:
            raise EngineError(
                f"model {self.model.name} recognizes {', '.join(self.info.languages)}, not {language!r}"
            )
        return SherpaOnlineStream(self, language)

    def run_batch(self, jobs: Sequence[tuple[EngineStream, Work]]) -> list[list[Hypothesis]]:
        streams = [stream for stream, _ in jobs]
        if not all(
            isinstance(stream, SherpaOnlineStream) and stream._engine is self for stream in streams
        ):
            raise EngineError("run_batch got a stream of another engine")
        ours: list[SherpaOnlineStream] = streams  # type: ignore[assignment]
        started = time.perf_counter()
        results: dict[int, list[Hypothesis]] = {id(stream): [] for stream in ours}
        for stream in ours:
            if not stream._done:
                stream._feed()
        recognizer = self.recognizer
        while True:
            ready = [
                stream
                for stream in ours
                if not stream._done and recognizer.is_ready(stream._stream)
            ]
            if not ready:
                break
            recognizer.decode_streams([stream._stream for stream in ready])
            for stream in ready:
                stream.stats.decodes += 1
                if recognizer.is_endpoint(stream._stream):
                    results[id(stream)].extend(stream._final())
                    recognizer.reset(stream._stream)
        for stream in ours:
            if stream._done:
                continue
            if stream._flushed:
                results[id(stream)].extend(stream._final())
                stream._done = True
            else:
                interim = stream._hypothesis("interim")
                if interim is not None:
                    results[id(stream)].append(interim)
        elapsed = time.perf_counter() - started
        for stream in ours:
            stream.stats.decode_seconds += elapsed / len(ours)
        return [results[id(stream)] for stream in ours]
