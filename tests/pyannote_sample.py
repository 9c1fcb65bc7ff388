"""The pyannote phone-call sample for tests: skipped where its wheel cannot be had."""

import pytest

from bench import pyannote_sample as _sample
from bench.pyannote_sample import SampleFiles, Utterance, cache_root, read_rttm, read_stm

__all__ = ["SampleFiles", "Utterance", "cache_root", "pyannote_sample", "read_rttm", "read_stm"]


def pyannote_sample() -> SampleFiles:
    try:
        return _sample.pyannote_sample()
    except _sample.SampleUnavailableError as exc:
        pytest.skip(str(exc))
