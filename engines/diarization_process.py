"""Diarization in a child process.

sherpa-onnx's offline diarization holds the GIL for the whole call (seconds to minutes), so
run in a thread it stalls the event loop that carries live audio and job heartbeats. Here the
:class:`Diarizer` lives in one spawned child; the calling thread only waits on a pipe. Calls
queue (one child, one call at a time); a child that dies is replaced at the next call.
"""

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

from engines.diarization import Diarizer, Turn, check_model_dir

_child: Diarizer | None = None


def _load(model_dir: Path, options: dict[str, Any]) -> None:
    global _child
    _child = Diarizer(model_dir, **options)


def _diarize(samples: np.ndarray | bytes, speakers_expected: int | None) -> list[Turn]:
    assert _child is not None, "the diarization process did not load its models"
    return _child.diarize(samples, speakers_expected)


class DiarizationProcess:
    """Same ``diarize`` as :class:`Diarizer`; blocking, meant for a worker thread."""

    def __init__(self, model_dir: Path, **options: Any) -> None:
        check_model_dir(Path(model_dir))
        self.model_dir = Path(model_dir)
        self._options = options
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_load,
                    initargs=(self.model_dir, self._options),
                )
            return self._pool

    def diarize(
        self, samples: np.ndarray | bytes, speakers_expected: int | None = None
    ) -> list[Turn]:
        pool = self._executor()
        try:
            return pool.submit(_diarize, samples, speakers_expected).result()
        except BrokenProcessPool:
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            raise

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
