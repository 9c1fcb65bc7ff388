"""Shared pieces of the live-pipeline tests: one loaded engine per test session."""

from functools import cache

from config import load_settings
from engines.base import Engine


@cache
def live_engine() -> Engine:
    from engines.factory import load_engine

    return load_engine("whisper-tiny.en", load_settings())
