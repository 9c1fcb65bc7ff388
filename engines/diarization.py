"""Who spoke when in mixed audio, and which recognized words belong to whom.

:class:`Diarizer` runs sherpa-onnx's offline speaker diarization (pyannote segmentation +
speaker embeddings + clustering) over ONNX models that
:func:`engines.diarization_export.prepare_diarization` makes once. :func:`assign_words` and
:func:`split_segments` attribute a recognizer's timed words to the resulting turns.
"""

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import onnxruntime as ort
import sherpa_onnx

from engines.base import (
    SAMPLE_RATE,
    EngineError,
    InvalidAudioError,
    ModelNotFoundError,
    as_float32,
)

SEGMENTATION_FILE = "segmentation.onnx"
EMBEDDING_FILE = "embedding.onnx"
PREPARE_COMMAND = "roomscribe models prepare diarization"

_SEGMENTATION_KEYS = (
    "model_type",
    "sample_rate",
    "window_size",
    "receptive_field_size",
    "receptive_field_shift",
    "num_speakers",
    "powerset_max_classes",
    "num_classes",
)
_EMBEDDING_KEYS = (
    "framework",
    "language",
    "sample_rate",
    "output_dim",
    "normalize_samples",
)
# sherpa-onnx ends the process on a model it cannot use, so models are checked here first.
_EMBEDDING_FRAMEWORKS = ("3d-speaker", "wespeaker")
_MIN_SAMPLES = SAMPLE_RATE // 2


class ModelDirError(ModelNotFoundError):
    """The diarization model folder is missing, incomplete or holds the wrong models."""

    def __init__(self, model_dir: Path, problem: str) -> None:
        super().__init__("diarization", f"{problem} in {model_dir}; run `{PREPARE_COMMAND}`")
        self.model_dir = model_dir
        self.problem = problem


class InvalidSpeakerCountError(EngineError, ValueError):
    code = "INVALID_REQUEST"

    def __init__(self, count: int) -> None:
        super().__init__(f"speakers_expected must be at least 1, got {count}")
        self.count = count


def default_model_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "models" / "diarization"


def check_model_dir(model_dir: Path) -> None:
    """Raise :class:`ModelDirError` unless both models exist with the metadata sherpa-onnx reads."""
    model_dir = Path(model_dir)
    _check_model(model_dir, SEGMENTATION_FILE, _SEGMENTATION_KEYS)
    framework = _check_model(model_dir, EMBEDDING_FILE, _EMBEDDING_KEYS)["framework"]
    if framework not in _EMBEDDING_FRAMEWORKS:
        raise ModelDirError(model_dir, f"{EMBEDDING_FILE} is a {framework!r} model")


def _check_model(model_dir: Path, name: str, keys: Sequence[str]) -> dict[str, str]:
    path = model_dir / name
    if not path.is_file():
        raise ModelDirError(model_dir, f"no {name}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable files
        raise ModelDirError(model_dir, f"{name} is not a readable ONNX model ({exc})") from exc
    meta: dict[str, str] = session.get_modelmeta().custom_metadata_map
    missing = [key for key in keys if key not in meta]
    if missing:
        raise ModelDirError(model_dir, f"{name} lacks metadata {', '.join(missing)}")
    if int(meta["sample_rate"]) != SAMPLE_RATE:
        raise ModelDirError(model_dir, f"{name} expects {meta['sample_rate']} Hz audio")
    return meta


@dataclass(frozen=True)
class Turn:
    """One stretch of one speaker's speech, in seconds from the start of the audio."""

    start: float
    end: float
    speaker: str


class Diarizer:
    """sherpa-onnx offline speaker diarization; safe to share between threads (calls queue)."""

    def __init__(
        self,
        model_dir: Path,
        *,
        num_threads: int = 2,
        threshold: float = 0.5,
        min_duration_on: float = 0.3,
        min_duration_off: float = 0.5,
        provider: str = "cpu",
    ) -> None:
        """``threshold`` is the clustering distance cut used when the speaker count is unknown:
        lower finds more speakers."""
        self.model_dir = Path(model_dir)
        check_model_dir(self.model_dir)
        self.threshold = threshold
        self._config = sherpa_onnx.OfflineSpeakerDiarizationConfig(
            segmentation=sherpa_onnx.OfflineSpeakerSegmentationModelConfig(
                pyannote=sherpa_onnx.OfflineSpeakerSegmentationPyannoteModelConfig(
                    model=str(self.model_dir / SEGMENTATION_FILE)
                ),
                num_threads=num_threads,
                provider=provider,
            ),
            embedding=sherpa_onnx.SpeakerEmbeddingExtractorConfig(
                model=str(self.model_dir / EMBEDDING_FILE),
                num_threads=num_threads,
                provider=provider,
            ),
            clustering=sherpa_onnx.FastClusteringConfig(threshold=threshold),
            min_duration_on=min_duration_on,
            min_duration_off=min_duration_off,
        )
        if not self._config.validate():
            raise ModelDirError(self.model_dir, "sherpa-onnx rejected the diarization config")
        self._sd = sherpa_onnx.OfflineSpeakerDiarization(self._config)
        # set_config + process must not interleave between threads.
        self._lock = threading.Lock()

    def diarize(
        self,
        samples: np.ndarray | bytes,
        speakers_expected: int | None = None,
        *,
        on_progress: Callable[[float], None] | None = None,
    ) -> list[Turn]:
        """Turns sorted by start time; speakers are "S1", "S2"... in order of first speech.

        Speakers are clustered with ``threshold`` unless ``speakers_expected`` fixes their
        number. Audio no longer than one segmentation window (10 s) is not clustered: its
        speakers are those the segmentation model tells apart in that window. Audio shorter
        than half a second has no turns.

        ``samples``: 16 kHz mono float32 (or int16 / s16le bytes). Blocks for a good fraction
        of the audio's duration: call it from a worker thread, not an event loop.
        ``on_progress`` gets the fraction done (0..1), on the calling thread.
        """
        if speakers_expected is not None and speakers_expected < 1:
            raise InvalidSpeakerCountError(speakers_expected)
        audio = np.ascontiguousarray(as_float32(samples))
        if not np.isfinite(audio).all():
            raise InvalidAudioError("audio holds NaN or infinite samples")
        if audio.size < _MIN_SAMPLES:
            return []
        clustering = sherpa_onnx.FastClusteringConfig(
            num_clusters=speakers_expected or -1, threshold=self.threshold
        )
        with self._lock:
            self._config.clustering = clustering
            self._sd.set_config(self._config)
            result = self._sd.process(audio, _progress_callback(on_progress)).sort_by_start_time()
        labels: dict[int, str] = {}
        turns = []
        for segment in result:
            speaker = labels.setdefault(segment.speaker, f"S{len(labels) + 1}")
            turns.append(Turn(round(segment.start, 3), round(segment.end, 3), speaker))
        if speakers_expected == 1 and len(labels) > 1:
            # Audio within one segmentation window skips clustering, so the count is not applied.
            return _merge_into_one(turns)
        return turns


def _progress_callback(
    on_progress: Callable[[float], None] | None,
) -> Callable[[int, int], int] | None:
    if on_progress is None:
        return None

    def callback(done: int, total: int) -> int:
        on_progress(done / total if total else 1.0)
        return 0

    return callback


def _merge_into_one(turns: Sequence[Turn]) -> list[Turn]:
    merged: list[Turn] = []
    for turn in turns:
        if merged and turn.start <= merged[-1].end:
            merged[-1] = Turn(merged[-1].start, max(merged[-1].end, turn.end), "S1")
        else:
            merged.append(Turn(turn.start, turn.end, "S1"))
    return merged


class Timed(Protocol):
    @property
    def start(self) -> float: ...

    @property
    def end(self) -> float: ...


W = TypeVar("W", bound=Timed)


def assign_words(turns: Sequence[Turn], words: Sequence[W]) -> list[tuple[str, W]]:
    """Give each word the speaker whose turn overlaps it most.

    A word in a gap between turns goes to the nearest turn; where turns overlap, the one
    covering more of the word wins (ties: the earlier turn). With no turns at all every word
    goes to "S1". Order of ``words`` is kept.
    """
    if not turns:
        return [("S1", word) for word in words]
    starts = np.array([t.start for t in turns])
    ends = np.array([t.end for t in turns])
    assigned = []
    for word in words:
        overlap = np.minimum(ends, word.end) - np.maximum(starts, word.start)
        best = int(np.argmax(overlap))
        if overlap[best] <= 0:
            middle = (word.start + word.end) / 2
            distance = np.maximum(starts - middle, 0) + np.maximum(middle - ends, 0)
            best = int(np.argmin(distance))
        assigned.append((turns[best].speaker, word))
    return assigned


class Worded(Protocol):
    @property
    def start(self) -> float: ...

    @property
    def end(self) -> float: ...

    @property
    def text(self) -> str: ...

    @property
    def words(self) -> Sequence[Timed]: ...


@dataclass(frozen=True)
class SpeakerSegment:
    speaker: str
    start: float
    end: float
    text: str
    words: tuple[Timed, ...] = ()


def split_segments(turns: Sequence[Turn], segments: Sequence[Worded]) -> list[SpeakerSegment]:
    """Attribute recognized segments to speakers, splitting one where the speaker changes.

    A segment whose words all go to one speaker keeps its own text; a split one gets the
    words of each part joined by spaces (words need a ``word`` attribute for that). A
    segment without words goes whole to the speaker overlapping its span most.
    """
    out: list[SpeakerSegment] = []
    for segment in segments:
        if not segment.words:
            ((speaker, _),) = assign_words(turns, [segment])
            out.append(SpeakerSegment(speaker, segment.start, segment.end, segment.text))
            continue
        runs: list[tuple[str, list[Timed]]] = []
        for speaker, word in assign_words(turns, segment.words):
            if runs and runs[-1][0] == speaker:
                runs[-1][1].append(word)
            else:
                runs.append((speaker, [word]))
        if len(runs) == 1:
            speaker, words = runs[0]
            out.append(
                SpeakerSegment(speaker, segment.start, segment.end, segment.text, tuple(words))
            )
            continue
        for speaker, words in runs:
            text = " ".join(str(getattr(w, "word", "")).strip() for w in words).strip()
            out.append(SpeakerSegment(speaker, words[0].start, words[-1].end, text, tuple(words)))
    return out
