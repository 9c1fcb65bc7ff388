"""One scheduler shares decode threads across every recognizer stream in the process.

Rules:
* a stream is never decoded by two threads at once (at most one job in flight per stream);
* finals go before partials, so a talker's finals are never starved by others' partials;
* while a final runs or waits, partials leave one thread free: a final is the caption a viewer
  keeps, and a partial sharing its core can double its decode time;
* partials decode on threads ``partial_nice`` nicer than finals' (Linux: nice is per thread),
  so a final that shares a core with a partial already running still gets most of it;
* among partials the stream served longest ago goes first (round robin);
* ready jobs of one engine are batched up to the engine's ``max_batch``;
* when partials wait longer than their cadence, ``load`` rises and every stream's partial
  cadence stretches (it backs off instead of falling behind); it decays when there is room.
"""

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from engines.base import Engine, EngineStream, Hypothesis, Work
from engines.cpu_threads import lower_this_thread
from engines.recognize import RecognizeStream

log = logging.getLogger(__name__)

ResultCallback = Callable[[list[Hypothesis]], None]
ErrorCallback = Callable[[BaseException], None]


@dataclass(eq=False)
class Registration:
    engine: Engine
    stream: EngineStream
    on_results: ResultCallback
    on_error: ErrorCallback
    last_served: float = field(default_factory=time.monotonic)
    in_flight: bool = False
    closed: bool = False


class DecodeScheduler:
    def __init__(
        self,
        threads: int = 0,
        max_load: float = 5.0,
        tick_s: float = 0.01,
        partial_nice: int = 0,
    ) -> None:
        """``max_load`` 1 keeps the partial cadence fixed (a feed that waits for recognition
        gets the same decodes at any speed)."""
        self.threads = threads or max(1, os.cpu_count() or 1)
        self.tick_s = tick_s
        self.max_load = max_load
        self.partial_nice = partial_nice
        self.load = 1.0
        self._registrations: list[Registration] = []
        self._executors: dict[Work, ThreadPoolExecutor] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._busy = 0
        self._finals_running = 0
        self.jobs_run = 0
        self.partials_deferred = 0

    async def start(self) -> None:
        if self._task is not None:
            return
        self._executors = {
            Work.FINAL: ThreadPoolExecutor(self.threads, thread_name_prefix="decode-final"),
            Work.PARTIAL: ThreadPoolExecutor(
                self.threads,
                thread_name_prefix="decode-partial",
                initializer=lower_this_thread,
                initargs=(self.partial_nice,),
            ),
        }
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="decode-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for executor in self._executors.values():
            executor.shutdown(wait=True, cancel_futures=True)
        self._executors = {}

    def open(self, engine: Engine, language: str | None = None) -> RecognizeStream:
        """A recognizer stream for one speaker on ``engine``, decoded by this scheduler."""
        return RecognizeStream(engine, self, language)

    def register(
        self,
        engine: Engine,
        stream: EngineStream,
        on_results: ResultCallback,
        on_error: ErrorCallback,
    ) -> Registration:
        reg = Registration(engine, stream, on_results, on_error)
        self._registrations.append(reg)
        self.wake()
        return reg

    def unregister(self, reg: Registration) -> None:
        reg.closed = True
        if reg in self._registrations:
            self._registrations.remove(reg)

    def wake(self) -> None:
        self._wake.set()

    @property
    def active_streams(self) -> int:
        return len(self._registrations)

    def backlog_s(self) -> float:
        """Audio the most-behind stream has not recognized yet, in seconds."""
        return max((reg.stream.backlog_seconds for reg in self._registrations), default=0.0)

    def _ready(self) -> list[tuple[Work, float, Registration]]:
        ready = []
        for reg in self._registrations:
            if reg.in_flight or reg.closed:
                continue
            work = reg.stream.next_work(self.load)
            if work is not None:
                ready.append((work, reg.last_served, reg))
        ready.sort(key=lambda item: (item[0], item[1]))
        return ready

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._dispatch()
            # Every pushed audio frame wakes the scheduler; with many tracks that is thousands
            # of wakes a second, each scanning every stream. Coalescing them costs 10 ms of
            # latency at most.
            await asyncio.sleep(self.tick_s)

    def _dispatch(self) -> None:
        ready = self._ready()
        free = self.threads - self._busy
        partial_waiting = sum(1 for work, _, _ in ready if work == Work.PARTIAL)
        while ready and free > 0:
            work, _, first = ready[0]
            if work == Work.PARTIAL and self._finals_running and free < 2:
                break
            ready.pop(0)
            batch = [(first, work)]
            limit = first.engine.info.max_batch
            for item in list(ready):
                if len(batch) >= limit:
                    break
                if item[2].engine is first.engine and item[0] == work:
                    batch.append((item[2], item[0]))
                    ready.remove(item)
            self._submit(first.engine, batch)
            free -= 1
        self._adjust_load(partial_waiting, sum(1 for work, _, _ in ready if work == Work.PARTIAL))

    def _adjust_load(self, waiting_before: int, still_waiting: int) -> None:
        if still_waiting:
            self.partials_deferred += still_waiting
            self.load = min(self.max_load, self.load * 1.25)
        elif waiting_before == 0 or self._busy < self.threads:
            self.load = max(1.0, self.load * 0.95)

    def _submit(self, engine: Engine, batch: list[tuple[Registration, Work]]) -> None:
        for reg, _ in batch:
            reg.in_flight = True
        self._busy += 1
        work = batch[0][1]
        final = work == Work.FINAL
        self._finals_running += final
        loop = asyncio.get_running_loop()
        jobs = [(reg.stream, work) for reg, _ in batch]
        future = loop.run_in_executor(self._executors[work], engine.run_batch, jobs)
        future.add_done_callback(lambda fut: self._finished(batch, fut, final))

    def _finished(
        self,
        batch: list[tuple[Registration, Work]],
        future: "asyncio.Future[list[list[Hypothesis]]]",
        final: bool,
    ) -> None:
        self._busy -= 1
        self._finals_running -= final
        self.jobs_run += 1
        now = time.monotonic()
        error = None if future.cancelled() else future.exception()
        for index, (reg, _) in enumerate(batch):
            reg.in_flight = False
            reg.last_served = now
            if reg.closed:
                continue
            if future.cancelled():
                continue
            if error is not None:
                log.error("decode failed: %s", error)
                reg.on_error(error)
            else:
                reg.on_results(future.result()[index])
        self.wake()
