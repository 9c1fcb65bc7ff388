"""The async recognizer stream callers use: push audio, end the input, iterate events, close."""

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

import numpy as np

from engines.base import Engine, EngineError, Hypothesis, StreamStats, as_float32

if TYPE_CHECKING:
    from engines.scheduler import DecodeScheduler


EventQueue = asyncio.Queue[Hypothesis | BaseException | None]


async def drain_events(events: EventQueue) -> AsyncIterator[Hypothesis]:
    """A recognizer's events until its end (None); an exception in the queue is raised."""
    while True:
        item = await events.get()
        if item is None:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


class SpeechRecognizer(Protocol):
    """What a caller holds for one speaker: :class:`RecognizeStream` in this process, or its
    counterpart decoded in the recognition process."""

    @property
    def backlog_seconds(self) -> float: ...

    def push_frame(self, pcm: bytes | np.ndarray) -> None: ...

    def end_input(self) -> None: ...

    async def wait_idle(self) -> None: ...

    def __aiter__(self) -> AsyncIterator[Hypothesis]: ...

    async def aclose(self) -> None: ...


class Recognition(Protocol):
    """Where live streams are decoded: :class:`engines.scheduler.DecodeScheduler` here, or
    :class:`pipeline.recognizer_process.RecognizerProcess` in a child process."""

    def open(self, engine: Engine, language: str | None = None) -> SpeechRecognizer: ...

    def backlog_s(self) -> float: ...

    async def stop(self) -> None: ...


class RecognizeStream:
    """One speaker's recognition. Events come out in order: interims then the final of each
    utterance. Iteration ends after :meth:`end_input` once every final is out."""

    def __init__(
        self,
        engine: Engine,
        scheduler: "DecodeScheduler",
        language: str | None = None,
        max_events: int = 256,
    ) -> None:
        self.engine = engine
        self._stream = engine.create_stream(language)
        self._scheduler = scheduler
        # Unbounded so a final is never refused; interims stop being queued past ``max_events``.
        self._events: EventQueue = asyncio.Queue()
        self._max_events = max_events
        self._ended = False
        self._closed = False
        self._reg = scheduler.register(engine, self._stream, self._deliver, self._fail)

    @property
    def stats(self) -> StreamStats:
        return self._stream.stats

    @property
    def backlog_seconds(self) -> float:
        return self._stream.backlog_seconds

    @property
    def idle(self) -> bool:
        """Nothing to decode and nothing being decoded: a feeder faster than real time waits
        for this, so every decode a real-time feed would get happens (same results)."""
        return not self._reg.in_flight and self._stream.next_work(self._scheduler.load) is None

    async def wait_idle(self) -> None:
        while not self.idle:  # noqa: ASYNC110 - decode-thread state, no event
            await asyncio.sleep(0.005)

    def push_frame(self, pcm: bytes | np.ndarray) -> None:
        """16 kHz mono audio: s16le bytes, int16 or float32 samples."""
        if self._ended:
            raise EngineError("stream input already ended")
        samples = as_float32(pcm)
        if samples.size:
            self._stream.accept(samples)
            self._scheduler.wake()

    def end_input(self) -> None:
        """No more audio: the open utterance is finalized and iteration ends after its final
        (a push after this raises). Utterances inside a stream close on the VAD's silence;
        there is no livekit-style ``flush`` that closes one and keeps the stream open."""
        if not self._ended:
            self._ended = True
            self._stream.finish()
            self._scheduler.wake()
            self._check_done()

    def _put(self, item: Hypothesis | BaseException | None) -> None:
        full = self._events.qsize() >= self._max_events
        if full and isinstance(item, Hypothesis) and item.kind == "interim":
            return  # an interim is superseded by the next one anyway; finals are never dropped
        self._events.put_nowait(item)

    def _deliver(self, results: list[Hypothesis]) -> None:
        for hyp in results:
            self._put(hyp)
        self._check_done()

    def _fail(self, error: BaseException) -> None:
        self._put(error)

    def _check_done(self) -> None:
        if self._ended and self._stream.done and not self._reg.in_flight and not self._reg.closed:
            self._scheduler.unregister(self._reg)
            self._put(None)

    def __aiter__(self) -> AsyncIterator[Hypothesis]:
        return drain_events(self._events)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._scheduler.unregister(self._reg)
            self._put(None)
