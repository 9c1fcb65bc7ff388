"""Shared pieces of the live-pipeline tests: one loaded engine per test session."""

from functools import cache

import numpy as np
import pytest

from config import load_settings
from engines.base import Engine


@cache
def live_engine() -> Engine:
    from engines.factory import load_engine

    return load_engine("whisper-tiny.en", load_settings())


def count_encodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes, in samples, of what the live Whisper engine's encoder runs on from now on."""
    from engines import whisper_chunked

    sizes: list[int] = []
    encode = whisper_chunked.encode

    def counting(model: object, audio: np.ndarray) -> object:
        sizes.append(audio.size)
        return encode(model, audio)  # type: ignore[arg-type]

    monkeypatch.setattr(whisper_chunked, "encode", counting)
    return sizes
