"""Word error rate with the text normalisation every test and benchmark uses, and the
diarization error rate."""

import re
from collections.abc import Iterable
from itertools import permutations

import jiwer
import numpy as np


def normalize(text: str) -> str:
    text = text.lower().replace("-", " ")
    text = re.sub(r"\bmr\b\.?", "mister", text)
    text = re.sub(r"[^a-z' ]", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def wer(reference: str, hypothesis: str) -> float:
    return float(jiwer.wer(normalize(reference), normalize(hypothesis)))


FRAME_S = 0.01


def _activity(
    turns: Iterable[tuple[float, float, str]], frames: int
) -> tuple[np.ndarray, list[str]]:
    turns = list(turns)
    speakers = sorted({speaker for _, _, speaker in turns})
    active = np.zeros((frames, len(speakers)), dtype=bool)
    for start, end, speaker in turns:
        active[round(start / FRAME_S) : round(end / FRAME_S), speakers.index(speaker)] = True
    return active, speakers


def _best_agreement(overlap: np.ndarray) -> float:
    refs, hyps = overlap.shape
    if refs == 0 or hyps == 0:
        return 0.0
    if hyps >= refs:
        return max(
            sum(overlap[r, h] for r, h in enumerate(chosen))
            for chosen in permutations(range(hyps), refs)
        )
    return _best_agreement(overlap.T)


def diarization_error_rate(
    reference: Iterable[tuple[float, float, str]],
    hypothesis: Iterable[tuple[float, float, str]],
    *,
    collar: float = 0.0,
) -> float:
    """Frame-level DER (10 ms frames, overlapping speech scored) under the one-to-one speaker
    mapping that maximises agreement (the NIST definition): (missed speech + false alarm +
    speaker confusion) / reference speech. ``collar`` seconds either side of every reference
    boundary are left out (0.25 is the customary forgiving setting).

    ``reference`` and ``hypothesis``: (start s, end s, speaker) turns.
    """
    reference, hypothesis = list(reference), list(hypothesis)
    end = max(e for _, e, _ in [*reference, *hypothesis])
    frames = round(end / FRAME_S) + 1
    ref, _ = _activity(reference, frames)
    hyp, _ = _activity(hypothesis, frames)
    scored = np.ones(frames, dtype=bool)
    if collar > 0:
        for start, stop, _ in reference:
            for edge in (start, stop):
                scored[
                    max(0, round((edge - collar) / FRAME_S)) : round((edge + collar) / FRAME_S)
                ] = False
    ref, hyp = ref[scored], hyp[scored]
    overlap = ref.T.astype(np.int64) @ hyp.astype(np.int64)
    correct = _best_agreement(overlap)
    errors = np.maximum(ref.sum(axis=1), hyp.sum(axis=1)).sum() - correct
    return float(errors / ref.sum())
