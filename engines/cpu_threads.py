"""How a decoding process's threads share the CPU: per-thread priority (Linux keeps a nice
value per thread; new threads inherit it) and NumPy's BLAS pool."""

import contextlib
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from threadpoolctl import threadpool_limits

T = TypeVar("T")


def can_lower(increment: int) -> bool:
    """Whether :func:`lower_this_thread` does anything here."""
    return increment > 0 and sys.platform == "linux"


def lower_this_thread(increment: int) -> None:
    """Raise this thread's nice value by ``increment`` (never lowers it: that needs privilege).
    Linux only: elsewhere the call would name the whole process, or another one."""
    if not can_lower(increment):
        return
    tid = threading.get_native_id()
    current = os.getpriority(os.PRIO_PROCESS, tid)
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + increment))


def build_at_lower_priority(build: Callable[[], T], increment: int) -> T:
    """``build()`` on a new thread ``increment`` nicer than this one, so the threads it
    starts (a native library's worker pool) run at that priority for their whole life."""
    with ThreadPoolExecutor(1, initializer=lower_this_thread, initargs=(increment,)) as pool:
        return pool.submit(build).result()


def one_blas_thread() -> None:
    """NumPy's BLAS computes on the calling thread alone from now on, in this process. Its
    pool (Whisper's feature extraction multiplies through it) ran at the priority of the
    thread that imported NumPy, not the decode's, and spun on the cores the decodes need:
    it nearly doubled a partial's CPU time."""
    threadpool_limits(limits=1, user_api="blas")
