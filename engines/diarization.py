"""Who spoke when in mixed audio, and which recognized words belong to whom.

:class:`Diarizer` runs pyannote segmentation-3.0 (ONNX Runtime) over sliding 10 s windows,
embeds every stretch of each window's local speakers with CAM++ (sherpa-onnx's embedding
extractor), clusters the embeddings into speakers (:func:`cluster`, our own: sherpa-onnx's
complete-linkage cut lets one outlier take a speaker's place when the count is fixed) and
rebuilds who speaks at each frame. The models come from
:func:`engines.diarization_export.prepare_diarization`, made once. :func:`assign_words` and
:func:`split_segments` attribute a recognizer's timed words to the resulting turns.
"""

import itertools
import math
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
PULL_COMMAND = "roomscribe models pull diarization"

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
_ORT_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
_SEGMENTATION_BATCH = 16
_SEGMENTATION_SHARE = 0.2  # of the progress reported
# Segmentation frames are 17 ms: an embedding needs 0.3 s of a speaker's speech in a window,
# and 1 s of it alone there to shape the clusters.
_MIN_EMBEDDING_FRAMES = 18
_CLUSTER_FRAMES = 59
_BRIDGE_FRAMES = 6  # pauses of 0.1 s or less do not split a stretch of speech
_SAME_SAMPLES = 800  # stretches whose edges agree to 50 ms share one embedding
_MAX_JOINT = 5000  # assignments tried for units that overlap; beyond, greedily
_MAX_CLUSTERED = 3000
MIN_SPEAKER_S = 1.0
THRESHOLD = 0.26
CLOSE_THRESHOLD = 0.18
CLOSE_MIN_S = 4.0


class ModelDirError(ModelNotFoundError):
    """The diarization model folder is missing, incomplete or holds the wrong models."""

    def __init__(self, model_dir: Path, problem: str) -> None:
        super().__init__(
            "diarization",
            f"{problem} in {model_dir}; run `{PREPARE_COMMAND}` (or `{PULL_COMMAND}` to"
            " download them)",
        )
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
    """Who spoke when: pyannote segmentation over sliding windows, one CAM++ embedding per
    window and local speaker, clustering into speakers, and frame-wise reconstruction.

    Safe to share between threads (calls queue). ONNX Runtime and numpy release the GIL
    for the heavy parts.
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        num_threads: int = 2,
        threshold: float = THRESHOLD,
        min_duration_on: float = 0.3,
        min_duration_off: float = 0.5,
        step_s: float = 1.0,
        provider: str = "cpu",
    ) -> None:
        """``threshold`` is the cosine distance between speaker centroids above which two
        clusters are two speakers when the count is unknown (closer ones too when both talk
        long enough: :func:`count_speakers`): lower finds more speakers.
        ``step_s``: hop between the 10 s segmentation windows."""
        self.model_dir = Path(model_dir)
        check_model_dir(self.model_dir)
        self.threshold = threshold
        self.min_duration_on = min_duration_on
        self.min_duration_off = min_duration_off
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._segmentation = ort.InferenceSession(
            str(self.model_dir / SEGMENTATION_FILE),
            options,
            providers=[_ORT_PROVIDERS.get(provider, "CPUExecutionProvider")],
        )
        meta = self._segmentation.get_modelmeta().custom_metadata_map
        self._window = int(meta["window_size"])
        self._frame_shift = int(meta["receptive_field_shift"])
        self._frame_offset = int(meta["receptive_field_size"]) / 2
        self._powerset = _powerset(int(meta["num_speakers"]), int(meta["powerset_max_classes"]))
        self._step = max(self._frame_shift, round(step_s * SAMPLE_RATE))
        embedding = sherpa_onnx.SpeakerEmbeddingExtractorConfig(
            model=str(self.model_dir / EMBEDDING_FILE),
            num_threads=num_threads,
            provider=provider,
        )
        if not embedding.validate():
            raise ModelDirError(self.model_dir, "sherpa-onnx rejected the embedding model")
        self._embedder = sherpa_onnx.SpeakerEmbeddingExtractor(embedding)
        self._lock = threading.Lock()

    def diarize(
        self,
        samples: np.ndarray | bytes,
        speakers_expected: int | None = None,
        *,
        on_progress: Callable[[float], None] | None = None,
    ) -> list[Turn]:
        """Turns sorted by start time; speakers are "S1", "S2"... in order of first speech.

        With ``speakers_expected`` = N the result has N speakers whenever the audio holds
        speech of N voices (fewer only when there is less speech than that); without it the
        count comes from ``threshold``. Audio shorter than half a second has no turns.

        ``samples``: 16 kHz mono float32 (or int16 / s16le bytes). Blocks for a good fraction
        of the audio's duration: call it from a worker thread, not an event loop.
        ``on_progress`` gets the fraction done (0..1), on the calling thread.
        """
        if speakers_expected is not None and speakers_expected < 1:
            raise InvalidSpeakerCountError(speakers_expected)
        audio = np.ascontiguousarray(as_float32(samples))
        if not np.isfinite(audio).all():
            raise InvalidAudioError("audio holds NaN or infinite samples")
        report = on_progress or _ignore
        if audio.size < _MIN_SAMPLES:
            report(1.0)
            return []
        with self._lock:
            activity = self._segment(audio)
            report(_SEGMENTATION_SHARE)
            units = self._embed(audio, activity, report)
            if not units.embedded.any():
                report(1.0)
                return []
            centroids = cluster(*units.clustered(), speakers_expected, self.threshold)
            labels = assign(units, centroids)
            active = self._reconstruct(activity, units, labels, centroids.shape[0], audio.size)
        report(1.0)
        return self._turns(active)

    # ---- segmentation -------------------------------------------------------------------

    def _chunk_starts(self, length: int) -> np.ndarray:
        if length <= self._window:
            return np.zeros(1, dtype=np.int64)
        starts = np.arange(0, length - self._window + 1, self._step)
        if starts[-1] + self._window < length:
            starts = np.append(starts, starts[-1] + self._step)
        return starts

    def _segment(self, audio: np.ndarray) -> np.ndarray:
        """Local speaker activity per window: (windows, frames, local speakers) of 0/1."""
        starts = self._chunk_starts(audio.size)
        padded = np.zeros(int(starts[-1]) + self._window, dtype=np.float32)
        padded[: audio.size] = audio
        name = self._segmentation.get_inputs()[0].name
        out = []
        for first in range(0, starts.size, _SEGMENTATION_BATCH):
            batch = np.stack(
                [padded[s : s + self._window] for s in starts[first : first + _SEGMENTATION_BATCH]]
            )
            scores = self._segmentation.run(None, {name: batch[:, None, :]})[0]
            out.append(self._powerset[scores.argmax(axis=-1)])
        return np.concatenate(out)

    # ---- embeddings -----------------------------------------------------------------------

    def _embed(
        self, audio: np.ndarray, activity: np.ndarray, report: Callable[[float], None]
    ) -> "Units":
        """Each stretch of a local speaker's speech in a window is one unit with its own
        embedding (the segmentation model may give two similar voices the same local index
        within a window, but rarely within one stretch), taken from the frames where that
        speaker talks alone when there are enough of them."""
        windows, frames, speakers = activity.shape
        alone = activity * (activity.sum(axis=2, keepdims=True) == 1)
        per_frame = self._window / frames
        # Audio of one window has no other windows to tell its speakers apart: there each
        # local speaker is one unit, as the segmentation model heard it.
        bridge = frames if windows == 1 else _BRIDGE_FRAMES
        spans = [
            (w, s, begin, end)
            for w in range(windows)
            for s in range(speakers)
            for begin, end in _runs(activity[w, :, s].astype(bool), bridge)
        ]
        vectors = np.zeros((len(spans), self._embedder.dim), dtype=np.float32)
        embedded = np.zeros(len(spans), dtype=bool)
        usable = np.zeros(len(spans), dtype=bool)
        clean_frames = np.zeros(len(spans), dtype=np.float64)
        seen: dict[tuple[tuple[int, int], ...], np.ndarray | None] = {}
        for index, (w, s, begin, end) in enumerate(spans):
            clean = alone[w, begin:end, s].astype(bool)
            clean_frames[index] = clean.sum()
            source = clean if clean.sum() >= _MIN_EMBEDDING_FRAMES else None
            if source is None and end - begin >= _MIN_EMBEDDING_FRAMES:
                source = np.ones(end - begin, dtype=bool)
            if source is not None:
                first = w * self._step + begin * per_frame
                pieces = [
                    (int(first + a * per_frame), min(int(first + b * per_frame), audio.size))
                    for a, b in _runs(source)
                ]
                # Neighbouring windows often hold the very same stretch: embed it once.
                key = tuple((lo // _SAME_SAMPLES, hi // _SAME_SAMPLES) for lo, hi in pieces)
                if key not in seen:
                    seen[key] = self._embedding(audio, pieces)
                vector = seen[key]
                if vector is not None:
                    vectors[index] = vector
                    embedded[index] = True
                    usable[index] = clean.sum() >= _CLUSTER_FRAMES
            report(
                min(1.0, _SEGMENTATION_SHARE + (1 - _SEGMENTATION_SHARE) * (index + 1) / len(spans))
            )
        repeats = min(windows, self._window / self._step)
        seconds = clean_frames * (self._frame_shift / SAMPLE_RATE) / repeats
        return Units(
            np.array(spans, dtype=np.int64).reshape(-1, 4), vectors, embedded, usable, seconds
        )

    def _embedding(self, audio: np.ndarray, pieces: list[tuple[int, int]]) -> np.ndarray | None:
        stream = self._embedder.create_stream()
        for lo, hi in pieces:
            if hi > lo:
                stream.accept_waveform(SAMPLE_RATE, audio[lo:hi])
        stream.input_finished()
        if not self._embedder.is_ready(stream):
            return None
        vector = np.asarray(self._embedder.compute(stream), dtype=np.float32)
        norm = float(np.linalg.norm(vector))
        return vector / norm if np.isfinite(vector).all() and norm > 0 else None

    # ---- reconstruction -------------------------------------------------------------------

    def _reconstruct(
        self, activity: np.ndarray, units: "Units", labels: np.ndarray, clusters: int, length: int
    ) -> np.ndarray:
        """Speaker activity per frame of the whole audio: (frames, clusters) of bools. Each
        frame gets as many speakers as the windows over it hear on average, the clusters
        those windows' units vote for most."""
        windows, frames, _ = activity.shape
        offsets = (np.arange(windows) * self._step / self._frame_shift + 0.5).astype(np.int64)
        total = int(offsets[-1]) + frames
        votes = np.zeros((total, clusters), dtype=np.float32)
        for (w, _, begin, end), label in zip(units.spans, labels, strict=True):
            if label >= 0:
                votes[offsets[w] + begin : offsets[w] + end, label] += 1.0
        counts = np.zeros(total, dtype=np.float32)
        cover = np.zeros(total, dtype=np.float32)
        local_counts = activity.sum(axis=2).astype(np.float32)
        for w in range(windows):
            counts[offsets[w] : offsets[w] + frames] += local_counts[w]
            cover[offsets[w] : offsets[w] + frames] += 1.0
        wanted = np.rint(counts / np.maximum(cover, 1.0)).astype(np.int64)
        ranked = np.argsort(-votes, axis=1, kind="stable")
        active = np.zeros(votes.shape, dtype=bool)
        rows = np.arange(total)
        for k in range(min(int(wanted.max(initial=0)), clusters)):
            pick = ranked[:, k]
            take = (wanted > k) & (votes[rows, pick] > 0)
            active[rows[take], pick[take]] = True
        last = int((length - self._frame_offset) / self._frame_shift) + 1
        return active[: max(0, min(last, total))]

    def _turns(self, labels: np.ndarray) -> list[Turn]:
        frame_s = self._frame_shift / SAMPLE_RATE
        offset_s = self._frame_offset / SAMPLE_RATE
        found: list[tuple[float, float, int]] = []
        for index in range(labels.shape[1]):
            spans: list[list[float]] = []
            for begin, end in _runs(labels[:, index]):
                start, stop = begin * frame_s + offset_s, end * frame_s + offset_s
                if spans and start - spans[-1][1] < self.min_duration_off:
                    spans[-1][1] = stop
                else:
                    spans.append([start, stop])
            found.extend((a, b, index) for a, b in spans if b - a >= self.min_duration_on)
        found.sort()
        names: dict[int, str] = {}
        return [
            Turn(round(a, 3), round(b, 3), names.setdefault(c, f"S{len(names) + 1}"))
            for a, b, c in found
        ]


def _ignore(done: float) -> None:
    pass


def _powerset(speakers: int, max_classes: int) -> np.ndarray:
    """Powerset class -> which local speakers it means (none, each alone, each pair...)."""
    rows: list[tuple[int, ...]] = [()]
    for size in range(1, max_classes + 1):
        rows.extend(itertools.combinations(range(speakers), size))
    table = np.zeros((len(rows), speakers), dtype=np.int8)
    for index, combo in enumerate(rows):
        table[index, list(combo)] = 1
    return table


def _runs(active: np.ndarray, bridge: int = 0) -> list[tuple[int, int]]:
    """[begin, end) index pairs of the True runs of a 1-D boolean array; runs less than
    ``bridge`` apart are one."""
    edges = np.diff(np.concatenate(([0], active.astype(np.int8), [0])))
    runs: list[tuple[int, int]] = []
    for begin, end in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
        if runs and begin - runs[-1][1] < bridge:
            runs[-1] = (runs[-1][0], int(end))
        else:
            runs.append((int(begin), int(end)))
    return runs


@dataclass(frozen=True)
class Units:
    """Stretches of local speakers' speech: ``spans`` rows are (window, local speaker, first
    frame, end frame); ``vectors`` their unit embeddings where ``embedded``. ``usable`` ones
    hold enough clean speech to shape the clusters; the others are only assigned to them.
    ``seconds``: a unit's clean speech divided by how many windows see each frame of it."""

    spans: np.ndarray
    vectors: np.ndarray
    embedded: np.ndarray
    usable: np.ndarray
    seconds: np.ndarray

    def clustered(self) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings that shape the clusters and the seconds of speech each stands for."""
        chosen = self.usable if self.usable.any() else self.embedded
        return self.vectors[chosen], self.seconds[chosen]


def cluster(
    vectors: np.ndarray, weights: np.ndarray, speakers: int | None, threshold: float
) -> np.ndarray:
    """Speaker centroids (unit rows) for unit-length embeddings, each worth ``weights``
    seconds of speech.

    Centroid-linkage agglomerative clustering on the cosine distance. A cluster holding
    less than :data:`MIN_SPEAKER_S` of speech (an outlier: a cough, a short overlap, a bad
    window) never counts as a speaker; its members join the nearest real one. With
    ``speakers`` = N the cut is the coarsest one holding N real clusters (else the one whose
    N-th cluster is heaviest); without it, N is counted by :func:`count_speakers`.
    """
    n = vectors.shape[0]
    if speakers == 1 or n == 1:
        return _unit(vectors.sum(axis=0, keepdims=True))
    if n > _MAX_CLUSTERED:
        keep = np.linspace(0, n - 1, _MAX_CLUSTERED).astype(np.int64)
        vectors, weights, n = vectors[keep], weights[keep] * (n / _MAX_CLUSTERED), _MAX_CLUSTERED
    merges = _agglomerate(vectors)
    if speakers is None:
        speakers = count_speakers(merges, weights, threshold)
    members = _labels(n, merges[: _cut_for(merges, weights, speakers)])
    mass = np.bincount(members, weights, minlength=n)
    real = [int(c) for c in np.argsort(-mass, kind="stable")[:speakers] if mass[c] > 0]
    centroids = _unit(np.stack([vectors[members == c].sum(axis=0) for c in real]))
    return _refine(vectors, centroids)


def count_speakers(
    merges: Sequence[tuple[int, int, float]],
    weights: np.ndarray,
    threshold: float,
    close_threshold: float = CLOSE_THRESHOLD,
    close_min_s: float = CLOSE_MIN_S,
) -> int:
    """How many voices a merge history holds: one, plus every merge of two real clusters
    (:data:`MIN_SPEAKER_S` each) that joins two voices. Farther apart than ``threshold``
    they are two voices; between ``close_threshold`` and ``threshold`` only when each side
    holds ``close_min_s`` of speech, as a short cluster that close is one voice heard
    differently (crosstalk, a laugh, a bad window) and close voices of two people each
    talking a while are not."""
    mass = weights.astype(np.float64)
    voices = 1
    for a, b, distance in merges:
        smaller = min(mass[a], mass[b])
        if smaller >= MIN_SPEAKER_S and (
            distance > threshold or (distance > close_threshold and smaller >= close_min_s)
        ):
            voices += 1
        mass[a] += mass[b]
        mass[b] = 0.0
    return voices


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def _agglomerate(vectors: np.ndarray) -> list[tuple[int, int, float]]:
    """Merge history (kept index, merged index, distance) of centroid linkage: n - 1 steps.
    Each row's nearest neighbour is cached, so a merge costs O(n) on average."""
    n = vectors.shape[0]
    sums = vectors.astype(np.float64)
    alive = np.ones(n, dtype=bool)
    dist = 1.0 - sums @ sums.T
    np.fill_diagonal(dist, np.inf)
    nearest = dist.argmin(axis=1)
    best = dist[np.arange(n), nearest]
    merges = []
    for _ in range(n - 1):
        a = int(best.argmin())
        a, b = sorted((a, int(nearest[a])))
        merges.append((a, b, float(dist[a, b])))
        sums[a] += sums[b]
        alive[b] = False
        dist[b, :] = np.inf
        dist[:, b] = np.inf
        best[b] = np.inf
        norms = np.maximum(np.linalg.norm(sums, axis=1), 1e-12)
        row = 1.0 - (sums @ sums[a]) / (norms * norms[a])
        row[~alive] = np.inf
        row[a] = np.inf
        dist[a, :] = row
        dist[:, a] = row
        nearest[a] = int(row.argmin())
        best[a] = row[nearest[a]]
        for k in np.flatnonzero(alive & ((nearest == a) | (nearest == b))):
            if k != a:
                nearest[k] = int(dist[k].argmin())
                best[k] = dist[k, nearest[k]]
        closer = alive & (row < best)
        nearest[closer] = a
        best[closer] = row[closer]
    return merges


def _labels(n: int, merges: Sequence[tuple[int, int, float]]) -> np.ndarray:
    parent = np.arange(n)
    for a, b, _ in merges:
        parent[parent == b] = a
    return parent


def _cut_for(merges: Sequence[tuple[int, int, float]], weights: np.ndarray, speakers: int) -> int:
    """How many merges to apply for ``speakers`` voices: the coarsest cut whose
    ``speakers``-th heaviest cluster is a real one, else the cut where it is heaviest."""
    mass = weights.astype(np.float64)
    nth = [float(np.sort(mass)[-speakers]) if mass.size >= speakers else 0.0]
    for a, b, _ in merges:
        mass[a] += mass[b]
        mass[b] = 0.0
        alive = mass[mass > 0]
        nth.append(
            float(np.partition(alive, -speakers)[-speakers]) if alive.size >= speakers else 0.0
        )
    reach = [step for step, value in enumerate(nth) if value >= MIN_SPEAKER_S]
    return reach[-1] if reach else int(np.argmax(nth))


def _refine(vectors: np.ndarray, centroids: np.ndarray, rounds: int = 5) -> np.ndarray:
    """A few k-means steps on the cosine: every embedding joins its nearest centroid."""
    for _ in range(rounds):
        nearest = (vectors @ centroids.T).argmax(axis=1)
        moved = centroids.copy()
        for c in range(centroids.shape[0]):
            if (nearest == c).any():
                moved[c] = vectors[nearest == c].sum(axis=0)
        moved = _unit(moved)
        if np.allclose(moved, centroids):
            break
        centroids = moved
    return centroids


def assign(units: Units, centroids: np.ndarray) -> np.ndarray:
    """A cluster index per unit (-1: none). Units of one window that overlap in time belong
    to different local speakers, so they go to different clusters (best total similarity);
    a unit too short for an embedding takes the cluster of its local speaker's nearest
    embedded stretch in the window."""
    similarity = units.vectors @ centroids.T
    clusters = centroids.shape[0]
    labels = np.full(len(units.spans), -1, dtype=np.int64)
    for group in _overlapping(units):
        rows = [r for r in group if units.embedded[r]]
        if not rows:
            continue
        scores = similarity[rows]
        choice: Sequence[int]
        if len(rows) > clusters:
            choice = scores.argmax(axis=1).tolist()
        elif math.perm(clusters, len(rows)) <= _MAX_JOINT:
            choice = max(
                itertools.permutations(range(clusters), len(rows)),
                key=lambda combo: sum(scores[i, c] for i, c in enumerate(combo)),
            )
        else:
            choice = _greedy_distinct(scores)
        labels[rows] = choice
    spans = units.spans
    for row in np.flatnonzero(~units.embedded):
        w, s, begin, end = spans[row]
        kin = np.flatnonzero((spans[:, 0] == w) & (spans[:, 1] == s) & units.embedded)
        if kin.size:
            gaps = np.maximum(spans[kin, 2] - end, 0) + np.maximum(begin - spans[kin, 3], 0)
            labels[row] = labels[kin[int(gaps.argmin())]]
    return labels


def _greedy_distinct(scores: np.ndarray) -> list[int]:
    """Rows to different columns, the most similar pairs first."""
    choice = [-1] * scores.shape[0]
    taken: set[int] = set()
    for flat in np.argsort(-scores, axis=None):
        row, column = divmod(int(flat), scores.shape[1])
        if choice[row] < 0 and column not in taken:
            choice[row] = column
            taken.add(column)
    return choice


def _overlapping(units: Units) -> list[list[int]]:
    """Groups of units of one window connected by overlapping in time."""
    groups: list[list[int]] = []
    order = np.lexsort((units.spans[:, 2], units.spans[:, 0]))
    end, window = -1, -1
    for row in order:
        w, _, begin, stop = (int(x) for x in units.spans[row])
        if w == window and begin < end:
            groups[-1].append(int(row))
            end = max(end, stop)
        else:
            groups.append([int(row)])
            window, end = w, stop
    return groups


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
