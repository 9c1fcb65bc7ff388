"""Live recognition in a child process.

The parent's event loop carries RTP, NATS and HTTP. Decoding and the VAD that runs on every
audio frame compete with it for the GIL and for the cores; in one process a busy decoder
starves the loop and the kernel drops datagrams. Here the engines and the
:class:`DecodeScheduler` live in a child at a lower CPU priority: the parent writes PCM to
its stdin and reads hypotheses from its stdout, each stream's messages in order. A child
that dies ends its open streams with an ``ENGINE_FAILED`` error (their recordings go on) and
is started again for new ones.
"""

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import struct
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from config import Settings
from engines.base import SAMPLE_RATE, Engine, EngineError, EngineInfo, Hypothesis, as_float32
from engines.factory import live_scheduler, load_engine, present_model
from engines.recognize import EventQueue, RecognizeStream, drain_events
from pipeline.tasks import TaskSet
from protocol.errors import ErrorCode

log = logging.getLogger("roomscribe.recognizer")

_LENGTH = struct.Struct("<I")
STATUS_INTERVAL_S = 0.1
# a child that never reads its input is stuck: past this much unsent audio it is replaced
MAX_UNSENT_BYTES = 64 << 20
RESTART_DELAYS_S = (0.2, 1.0, 5.0)


def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RecognizerProcessError(EngineError):
    code: str = ErrorCode.ENGINE_FAILED


def _pack(message: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


async def _unpack(reader: asyncio.StreamReader) -> tuple[Any, ...]:
    (size,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    message: tuple[Any, ...] = pickle.loads(await reader.readexactly(size))  # noqa: S301 - our own child
    return message


# ---------------------------------------------------------------- child side


class _Child:
    def __init__(self, settings: Settings, out: asyncio.StreamWriter) -> None:
        self.settings = settings
        self.out = out
        self.scheduler = live_scheduler(settings)
        self.engines: dict[str, Engine] = {}
        self.streams: dict[int, RecognizeStream] = {}
        self.accepted: dict[int, int] = {}
        self.tasks = TaskSet("recognizer child")

    def send(self, *message: Any) -> None:
        self.out.write(_pack(message))

    async def run(self, reader: asyncio.StreamReader) -> None:
        await self.scheduler.start()
        self.tasks.spawn(self._report(), "status")
        self.send("ready", os.getpid())
        try:
            while True:
                try:
                    message = await _unpack(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the parent is gone
                try:
                    self._handle(message)
                except EngineError as exc:
                    self.send("error", message[1], exc.code, str(exc))
                try:
                    await self.out.drain()
                except ConnectionError:
                    return  # the parent is gone
        finally:
            await self.tasks.aclose()
            await self.scheduler.stop()

    def _handle(self, message: tuple[Any, ...]) -> None:
        op, key, *args = message
        if op == "audio":
            stream = self.streams.get(key)
            if stream is not None:
                samples = np.frombuffer(args[0], np.float32)
                self.accepted[key] += samples.size
                stream.push_frame(samples)
        elif op == "open":
            name, language = args
            if name not in self.engines:
                raise RecognizerProcessError(f"{name} is not loaded in the recognition process")
            stream = RecognizeStream(self.engines[name], self.scheduler, language)
            self.streams[key] = stream
            self.accepted[key] = 0
            self.tasks.spawn(self._forward(key, stream), f"stream {key}")
        elif op == "end":
            if key in self.streams:
                self.streams[key].end_input()
        elif op == "close":
            stream = self.streams.pop(key, None)
            self.accepted.pop(key, None)
            if stream is not None:
                self.tasks.spawn(stream.aclose(), f"close {key}")
        elif op == "idle?":
            self.tasks.spawn(self._idle(key, args[0]), f"idle {key}")
        elif op == "load":
            self.tasks.spawn(self._load(key, *args), f"load {args[0]}")

    async def _load(self, request: int, name: str, multilingual: bool) -> None:
        try:
            if name not in self.engines:
                self.engines[name] = await asyncio.to_thread(
                    load_engine, name, self.settings, multilingual=multilingual
                )
        except Exception as exc:
            self.send("failed", request, f"loading {name} failed: {exc}")
        else:
            self.send("loaded", request, self.engines[name].info)
        await self.out.drain()

    async def _forward(self, key: int, stream: RecognizeStream) -> None:
        try:
            async for hypothesis in stream:
                self.send("hyp", key, hypothesis)
        except EngineError as exc:
            self.send("error", key, exc.code, str(exc))
        except Exception as exc:
            self.send("error", key, ErrorCode.ENGINE_FAILED, f"recognition failed: {exc}")
        self.send("done", key)
        await self.out.drain()

    async def _idle(self, key: int, token: int) -> None:
        stream = self.streams.get(key)
        while stream is not None and not stream.idle:  # noqa: ASYNC110 - decode-thread state
            await asyncio.sleep(0.005)
        self.send("idle", key, token)
        await self.out.drain()

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            streams = {
                key: (self.accepted[key], stream.backlog_seconds)
                for key, stream in self.streams.items()
            }
            self.send("status", 0, self.scheduler.load, streams)
            await self.out.drain()


async def _child_main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    # the channel is a copy of stdout; stdout itself goes to stderr so a stray print from a
    # library cannot corrupt it
    channel = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, channel)
    out = asyncio.StreamWriter(transport, protocol, None, loop)
    _, settings, nice = await _unpack(reader)
    with contextlib.suppress(OSError):
        os.nice(nice)
    if not settings.live.decode_threads:
        # at a lower priority every core can decode: the bot's loop still gets one first
        live = settings.live.model_copy(update={"decode_threads": os.cpu_count() or 1})
        settings = settings.model_copy(update={"live": live})
    await _Child(settings, out).run(reader)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="recognizer: %(levelname)s %(message)s")
    asyncio.run(_child_main())


# ---------------------------------------------------------------- parent side


class RemoteEngine(Engine):
    """A live engine loaded in the recognition process: its :attr:`info` here, its model
    there. Streams on it are opened through :meth:`RecognizerProcess.open`."""

    def __init__(self, info: EngineInfo, process: "RecognizerProcess") -> None:
        self.info = info
        self.process = process

    def create_stream(self, language: str | None = None) -> Any:
        raise EngineError(f"{self.info.name} decodes in the recognition process")


@dataclass(eq=False)
class RemoteRecognizeStream:
    """:class:`engines.recognize.RecognizeStream`'s contract, decoded in the child."""

    process: "RecognizerProcess"
    key: int
    engine: Engine
    generation: int
    pushed: int = 0
    accepted: int = 0
    child_backlog_s: float = 0.0
    failed: bool = False
    ended: bool = False
    closed: bool = False
    events: EventQueue = field(default_factory=asyncio.Queue)
    idle_waiters: dict[int, asyncio.Future[None]] = field(default_factory=dict)

    @property
    def backlog_seconds(self) -> float:
        return self.child_backlog_s + (self.pushed - self.accepted) / SAMPLE_RATE

    def push_frame(self, pcm: bytes | np.ndarray) -> None:
        if self.ended:
            raise EngineError("stream input already ended")
        if self.failed:
            return  # its captions ended with an error; the caller still records the audio
        samples = as_float32(pcm)
        if samples.size:
            self.pushed += samples.size
            self.process.send(self, "audio", samples.tobytes())

    def end_input(self) -> None:
        if not self.ended:
            self.ended = True
            self.process.send(self, "end")

    async def wait_idle(self) -> None:
        """Returns once the child has decoded everything pushed before the call."""
        if self.failed or self.closed:
            return
        token = next(self.process.tokens)
        waiter = asyncio.get_running_loop().create_future()
        self.idle_waiters[token] = waiter
        self.process.send(self, "idle?", token)
        await waiter

    def fail(self, error: EngineError) -> None:
        if self.failed:
            return
        self.failed = True
        self.events.put_nowait(error)
        self.events.put_nowait(None)
        for waiter in self.idle_waiters.values():
            if not waiter.done():
                waiter.set_result(None)
        self.idle_waiters.clear()

    def __aiter__(self) -> AsyncIterator[Hypothesis]:
        return drain_events(self.events)

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.process.forget(self)
            self.events.put_nowait(None)


class RecognizerProcess:
    """Parent-side owner of the recognition child: starts it, loads engines in it, opens
    streams, restarts it when it dies. Same ``open`` / ``backlog_s`` / ``stop`` as
    :class:`DecodeScheduler`, so a :class:`pipeline.runtime.LiveRuntime` takes either."""

    def __init__(self, settings: Settings, nice: int = 10) -> None:
        self.settings = settings
        self.nice = nice
        self.decode_load = 1.0
        self.restarts = 0
        self.pid: int | None = None
        self.tokens = itertools.count()
        self._keys = itertools.count(1)
        self._generation = 0
        self._child: asyncio.subprocess.Process | None = None
        self._ready = asyncio.Event()  # the child is up
        self._serving = asyncio.Event()  # ... and has every engine loaded again
        self._loaded: dict[str, tuple[bool, EngineInfo]] = {}
        self._requests: dict[int, asyncio.Future[EngineInfo]] = {}
        self._streams: dict[int, RemoteRecognizeStream] = {}
        self._tasks = TaskSet("recognizer process")
        self._closing = False
        self._last_exit: str = ""

    async def start(self) -> None:
        """Starts the child; raises :class:`RecognizerProcessError` when it cannot."""
        await self._spawn()
        child = self._child
        assert child is not None
        ready = asyncio.ensure_future(self._ready.wait())
        ended = asyncio.ensure_future(child.wait())
        try:
            await asyncio.wait({ready, ended}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            ended.cancel()
        if not self._ready.is_set():
            self._closing = True
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()
            await self._tasks.aclose()
            raise RecognizerProcessError(
                f"the recognition process did not start (exit code {child.returncode}; its error is in the log above)"
            )
        self._serving.set()

    async def _spawn(self) -> None:
        self._ready.clear()
        self._generation += 1
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pipeline.recognizer_process",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 24,
        )
        self._child = child
        assert child.stdin is not None
        child.stdin.write(_pack(("settings", self.settings, self.nice)))
        self._tasks.spawn(self._read(child, self._generation), f"read {child.pid}")

    async def load(self, name: str, multilingual: bool = False) -> RemoteEngine:
        """``name`` loaded in the child (once; again after a restart). Raises
        :class:`engines.base.ModelNotFoundError` as :func:`load_engine` does."""
        if name not in self._loaded:
            present_model(name, self.settings)
            info = await self._request_load(name, multilingual)
            self._loaded[name] = (multilingual, info)
        return RemoteEngine(self._loaded[name][1], self)

    async def _request_load(self, name: str, multilingual: bool) -> EngineInfo:
        await self._ready.wait()
        request = next(self.tokens)
        answer = asyncio.get_running_loop().create_future()
        self._requests[request] = answer
        self._write(("load", request, name, multilingual))
        return await answer

    def open(self, engine: Engine, language: str | None = None) -> RemoteRecognizeStream:
        stream = RemoteRecognizeStream(self, next(self._keys), engine, self._generation)
        self._streams[stream.key] = stream
        if not self._serving.is_set():
            stream.fail(self._lost_error())
            return stream
        self.send(stream, "open", engine.info.name, language)
        return stream

    def send(self, stream: RemoteRecognizeStream, op: str, *args: Any) -> None:
        if stream.failed or stream.generation != self._generation:
            return
        self._write((op, stream.key, *args))

    def _write(self, message: tuple[Any, ...]) -> None:
        child = self._child
        if child is None or child.stdin is None or child.stdin.is_closing():
            return
        transport = child.stdin.transport
        if transport.get_write_buffer_size() > MAX_UNSENT_BYTES:
            log.error("recognition process %s reads no input; replacing it", child.pid)
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            return
        child.stdin.write(_pack(message))

    def forget(self, stream: RemoteRecognizeStream) -> None:
        if self._streams.pop(stream.key, None) is not None:
            self.send(stream, "close")

    def backlog_s(self) -> float:
        return max((s.backlog_seconds for s in self._streams.values()), default=0.0)

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    def metrics(self) -> Iterator[Metric]:
        """The recognition process, read at each ``/metrics`` scrape."""
        up = self._serving.is_set()
        yield GaugeMetricFamily(
            "roomscribe_recognizer_up", "the recognition process serves streams", value=int(up)
        )
        yield CounterMetricFamily(
            "roomscribe_recognizer_restarts",
            "times the recognition process ended and was started again",
            value=self.restarts,
        )
        yield GaugeMetricFamily(
            "roomscribe_recognizer_streams",
            "live streams decoded there now",
            value=len(self._streams),
        )
        yield GaugeMetricFamily(
            "roomscribe_recognizer_backlog_seconds",
            "audio the most-behind stream has not recognized yet",
            value=self.backlog_s(),
        )
        yield GaugeMetricFamily(
            "roomscribe_recognizer_decode_load",
            "how far its scheduler stretched the partial cadence (1 = not at all)",
            value=self.decode_load,
        )
        cpu = _cpu_seconds(self.pid) if up and self.pid else None
        if cpu is not None:
            yield CounterMetricFamily(
                "roomscribe_recognizer_cpu_seconds",
                "CPU time the current recognition process used",
                value=cpu,
            )

    async def _read(self, child: asyncio.subprocess.Process, generation: int) -> None:
        assert child.stdout is not None
        try:
            while True:
                self._dispatch(await _unpack(child.stdout))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        code = await child.wait()
        if self._closing:
            return
        self._last_exit = f"exit code {code}" if code >= 0 else f"signal {-code}"
        log.error("recognition process %s ended (%s)", child.pid, self._last_exit)
        self._lost(generation)
        self._tasks.spawn(self._restart(), "restart")

    def _lost_error(self) -> RecognizerProcessError:
        return RecognizerProcessError(
            f"the recognition process ended ({self._last_exit or 'not running'}); "
            "live captions of this stream stop, its recording goes on"
        )

    def _lost(self, generation: int) -> None:
        self._ready.clear()
        self._serving.clear()
        error = self._lost_error()
        for stream in list(self._streams.values()):
            if stream.generation == generation:
                stream.fail(error)
                del self._streams[stream.key]
        for answer in self._requests.values():
            if not answer.done():
                answer.set_exception(error)
        self._requests.clear()

    async def _restart(self) -> None:
        delay = RESTART_DELAYS_S[min(self.restarts, len(RESTART_DELAYS_S) - 1)]
        self.restarts += 1
        await asyncio.sleep(delay)
        if self._closing:
            return
        started = time.monotonic()
        await self._spawn()
        await self._ready.wait()
        for name, (multilingual, _) in list(self._loaded.items()):
            try:
                self._loaded[name] = (multilingual, await self._request_load(name, multilingual))
            except EngineError as exc:
                log.error("recognition process: reloading %s failed: %s", name, exc)
        self._serving.set()
        log.warning(
            "recognition process %s started again in %.1f s", self.pid, time.monotonic() - started
        )

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        op, key, *args = message
        if op == "status":
            load, streams = args
            self.decode_load = load
            for stream_key, (accepted, backlog) in streams.items():
                stream = self._streams.get(stream_key)
                if stream is not None:
                    stream.accepted, stream.child_backlog_s = accepted, backlog
            return
        if op == "ready":
            self.pid = key
            self._ready.set()
            return
        if op in ("loaded", "failed"):
            answer = self._requests.pop(key, None)
            if answer is not None and not answer.done():
                if op == "loaded":
                    answer.set_result(args[0])
                else:
                    answer.set_exception(RecognizerProcessError(args[0]))
            return
        stream = self._streams.get(key)
        if stream is None:
            return
        if op == "hyp":
            stream.events.put_nowait(args[0])
        elif op == "error":
            code, text = args
            error = EngineError(text)
            error.code = code
            stream.events.put_nowait(error)
        elif op == "done":
            self._streams.pop(key, None)
            stream.events.put_nowait(None)
        elif op == "idle":
            waiter = stream.idle_waiters.pop(args[0], None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def stop(self) -> None:
        self._closing = True
        child = self._child
        if child is not None and child.returncode is None:
            assert child.stdin is not None
            child.stdin.close()
            try:
                async with asyncio.timeout(5):
                    await child.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
                await child.wait()
        await self._tasks.aclose()
        for stream in list(self._streams.values()):
            stream.fail(RecognizerProcessError("the recognition process was shut down"))
        self._streams.clear()


if __name__ == "__main__":
    main()
