"""The decode scheduler's rules, checked with an engine whose streams record how they are run."""

import asyncio
import os
import sys
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from engines.base import Engine, EngineInfo, EngineStream, Hypothesis, Work
from engines.recognize import RecognizeStream
from engines.scheduler import DecodeScheduler


class RecordingStream(EngineStream):
    def __init__(self, log: list[tuple[str, Work]], name: str, finals: int, partials: int) -> None:
        super().__init__()
        self.log, self.name = log, name
        self.finals, self.partials = finals, partials
        self.active = 0
        self.overlaps = 0
        self.finished = False

    def accept(self, samples: np.ndarray) -> None:
        self.partials += 1

    def finish(self) -> None:
        self.finished = True

    def next_work(self, load: float) -> Work | None:
        if self.finals:
            return Work.FINAL
        return Work.PARTIAL if self.partials else None

    def run(self, work: Work) -> list[Hypothesis]:
        with self.lock:
            self.active += 1
            if self.active > 1:
                self.overlaps += 1
        time.sleep(0.02)
        self.log.append((self.name, work))
        with self.lock:
            self.active -= 1
        if work == Work.FINAL and self.finals:
            self.finals -= 1
            return [Hypothesis("final", self.finals, "done", 0.0, 1.0)]
        if work == Work.PARTIAL and self.partials:
            self.partials -= 1
            return [Hypothesis("interim", 0, "so far", 0.0, 0.5)]
        return []

    @property
    def done(self) -> bool:
        return self.finished and not self.finals and not self.partials


class RecordingEngine(Engine):
    def __init__(self, max_batch: int = 1) -> None:
        self.info = EngineInfo("recording", "test", max_batch=max_batch)
        self.log: list[tuple[str, Work]] = []
        self.batches: list[int] = []
        self.threads: set[str] = set()
        self.running = {Work.FINAL: 0, Work.PARTIAL: 0}
        self.partial_starts: list[tuple[int, int]] = []  # (finals, partials) running at each
        self.lock = threading.Lock()
        self.nice: dict[Work, set[int]] = {Work.FINAL: set(), Work.PARTIAL: set()}

    def create_stream(self, language: str | None = None) -> RecordingStream:
        return RecordingStream(self.log, f"s{len(self.batches)}", 0, 0)

    def run_batch(self, jobs: Sequence[tuple[EngineStream, Work]]) -> list[list[Hypothesis]]:
        self.batches.append(len(jobs))
        self.threads.add(threading.current_thread().name)
        work = jobs[0][1]
        self.nice[work].add(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        with self.lock:
            self.running[work] += 1
            if work == Work.PARTIAL:
                self.partial_starts.append((self.running[Work.FINAL], self.running[work]))
        try:
            return super().run_batch(jobs)
        finally:
            with self.lock:
                self.running[work] -= 1


async def settle(engine: RecordingEngine, streams: list[RecordingStream]) -> None:
    """Polls: the streams' counters change on decode threads, which cannot set an asyncio.Event."""
    async with asyncio.timeout(10):
        while any(s.finals or s.partials for s in streams):  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def run_all(
    scheduler: DecodeScheduler, engine: RecordingEngine, streams: list[RecordingStream]
) -> None:
    """Registers ``streams``, runs the scheduler until they have no work left, stops it."""
    for stream in streams:
        scheduler.register(engine, stream, lambda _: None, lambda _: None)
    await scheduler.start()
    await settle(engine, streams)
    await scheduler.stop()


async def test_finals_go_before_partials_and_no_stream_runs_twice_at_once() -> None:
    engine = RecordingEngine()
    scheduler = DecodeScheduler(threads=1)
    streams = [RecordingStream(engine.log, f"p{i}", 0, 3) for i in range(4)]
    talker = RecordingStream(engine.log, "talker", 2, 0)
    await run_all(scheduler, engine, [*streams, talker])
    first_two = engine.log[:2]
    assert first_two == [("talker", Work.FINAL), ("talker", Work.FINAL)]
    assert all(s.overlaps == 0 for s in [*streams, talker])


async def test_many_threads_never_share_a_stream() -> None:
    engine = RecordingEngine()
    scheduler = DecodeScheduler(threads=4)
    streams = [RecordingStream(engine.log, f"p{i}", 3, 5) for i in range(6)]
    await run_all(scheduler, engine, streams)
    assert len(engine.log) == 6 * 8
    assert all(s.overlaps == 0 for s in streams)
    assert len(engine.threads) > 1


async def test_partials_leave_a_thread_free_while_a_final_runs() -> None:
    for threads in (2, 3):
        engine = RecordingEngine()
        scheduler = DecodeScheduler(threads=threads)
        others = [RecordingStream(engine.log, f"p{i}", 0, 6) for i in range(4)]
        talkers = [RecordingStream(engine.log, "talker", 4, 0)]
        await run_all(scheduler, engine, [*others, *talkers])
        beside_a_final = [partials for finals, partials in engine.partial_starts if finals]
        assert len(engine.partial_starts) == 4 * 6
        assert all(partials <= threads - 2 for partials in beside_a_final), engine.partial_starts
        if threads == 3:
            assert beside_a_final  # the first dispatch: the final, and one partial beside it
        assert sum(1 for name, work in engine.log if work == Work.FINAL) == 4


@pytest.mark.skipif(sys.platform != "linux", reason="nice is per thread on Linux only")
async def test_partials_decode_on_nicer_threads_than_finals() -> None:
    engine = RecordingEngine()
    scheduler = DecodeScheduler(threads=2, partial_nice=7)
    streams = [RecordingStream(engine.log, f"p{i}", 2, 3) for i in range(3)]
    await run_all(scheduler, engine, streams)
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert engine.nice == {Work.FINAL: {ours}, Work.PARTIAL: {min(19, ours + 7)}}
    assert os.getpriority(os.PRIO_PROCESS, 0) == ours  # the process itself is untouched


async def test_ready_streams_are_batched_and_partials_round_robin() -> None:
    engine = RecordingEngine(max_batch=3)
    scheduler = DecodeScheduler(threads=1)
    streams = [RecordingStream(engine.log, f"p{i}", 0, 2) for i in range(6)]
    await run_all(scheduler, engine, streams)
    assert max(engine.batches) == 3
    served_first = [name for name, _ in engine.log[:6]]
    assert sorted(served_first) == sorted(
        s.name for s in streams
    )  # everyone once before anyone twice


async def test_waiting_partials_raise_the_load() -> None:
    engine = RecordingEngine()
    scheduler = DecodeScheduler(threads=1)
    streams = [RecordingStream(engine.log, f"p{i}", 0, 4) for i in range(5)]
    for stream in streams:
        scheduler.register(engine, stream, lambda _: None, lambda _: None)
    await scheduler.start()
    await asyncio.sleep(0.2)
    assert scheduler.load > 1.0
    assert scheduler.partials_deferred > 0
    await settle(engine, streams)
    await scheduler.stop()


async def test_recognize_stream_ends_after_its_last_final() -> None:
    engine = RecordingEngine()
    scheduler = DecodeScheduler(threads=2)
    await scheduler.start()
    stream = RecognizeStream(engine, scheduler)
    inner = stream._stream
    assert isinstance(inner, RecordingStream)
    inner.finals = 2
    stream.push_frame(np.zeros(160, np.float32))
    stream.end_input()
    kinds = [event.kind async for event in stream]
    await scheduler.stop()
    assert sorted(kinds) == ["final", "final", "interim"]  # iteration ended once all work was done
