"""Diarization error rate for tests: the definition lives in :mod:`bench.scoring`."""

from bench.scoring import diarization_error_rate

__all__ = ["diarization_error_rate"]
