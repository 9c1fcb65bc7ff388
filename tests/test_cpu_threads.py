"""Partials decode at a lower CPU priority than finals, where the model's work really runs."""

import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from config import load_settings
from engines.cpu_threads import build_at_lower_priority, lower_this_thread
from tests.conftest import librivox_files, read_wav16
from tests.live_helpers import live_engine

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="nice is per thread on Linux only")


def cpu_ticks_by_nice() -> Counter[int]:
    ticks: Counter[int] = Counter()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue  # a thread that ended meanwhile
        ticks[int(fields[16])] += int(fields[11]) + int(fields[12])
    return ticks


def test_a_real_partial_computes_on_nicer_threads_than_a_final() -> None:
    engine = live_engine()
    nice = load_settings().live.partial_nice
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    clip = read_wav16(librivox_files()[1]).astype(np.float32) / 32768  # ill-disposed young man
    spent = {}
    for final, increment in ((True, 0), (False, nice)):
        # the scheduler's executors: finals at the process's priority, partials nicer
        with ThreadPoolExecutor(1, initializer=lower_this_thread, initargs=(increment,)) as pool:
            before = cpu_ticks_by_nice()
            for _ in range(4):
                text, _, _ = pool.submit(engine.decode, clip, 0.0, "en", final=final).result()  # type: ignore[attr-defined]
                assert "young man" in text.lower(), text
            spent[final] = cpu_ticks_by_nice() - before
    nicer = min(19, ours + nice)
    assert spent[True][ours] >= 0.9 * spent[True].total(), spent
    assert spent[False][nicer] >= 0.9 * spent[False].total(), spent


def test_building_at_lower_priority_leaves_this_thread_and_passes_errors_on() -> None:
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert build_at_lower_priority(lambda: os.getpriority(os.PRIO_PROCESS, 0), 5) == min(
        19, ours + 5
    )
    assert os.getpriority(os.PRIO_PROCESS, 0) == ours

    def broken() -> None:
        raise ValueError("model file is truncated")

    with pytest.raises(ValueError, match="model file is truncated"):
        build_at_lower_priority(broken, 5)
