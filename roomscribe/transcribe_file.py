"""`roomscribe transcribe`: one file, one batch pass, rendered in an export format."""

import uuid
from pathlib import Path

import numpy as np

from config import Settings
from engines.base import SAMPLE_RATE
from engines.factory import load_engine
from engines.models import check_language, normalize_language
from pipeline.audio_io import decode_file
from pipeline.exports import ExportFormat, render
from protocol import Word
from protocol.transcript import Segment, Speaker, Transcript


def transcribe_samples(
    settings: Settings, samples: np.ndarray, model: str, language: str | None = None
) -> Transcript:
    named = language is not None  # "auto" too: then the model detects the language
    if named:
        language = normalize_language(language)
        check_language(model, language)
    engine = load_engine(model, settings, multilingual=named)
    try:
        finals = engine.transcribe(samples.astype("float32") / 32768.0, language)
    finally:
        engine.close()
    segments = [
        Segment(
            id=f"seg-{index}",
            speaker="S1",
            start=round(h.start, 3),
            end=round(h.end, 3),
            text=h.text,
            words=[
                Word(word=w.word, start=w.start, end=w.end, confidence=w.confidence)
                for w in h.words
            ],
        )
        for index, h in enumerate(f for f in finals if f.text)
    ]
    return Transcript(
        id=uuid.uuid4().hex,
        language=next((h.language for h in finals if h.language), language),
        model=engine.info.name,
        duration=round(samples.size / SAMPLE_RATE, 3),
        speakers=[Speaker(id="S1")],
        segments=segments,
    )


def transcribe_file(
    settings: Settings, path: Path, model: str, fmt: ExportFormat, language: str | None = None
) -> str:
    return render(transcribe_samples(settings, decode_file(path), model, language), fmt)
