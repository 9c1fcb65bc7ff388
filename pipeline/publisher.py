"""Publishes frames on NATS without ever blocking the pipeline.

Frames wait in a bounded :class:`Outbox` until a batch is confirmed by the server (publish,
then a PING/PONG flush), never when nats-py has merely written them: bytes written into a
socket whose server froze or died are gone. While NATS is away nothing is handed to nats-py;
the outbox keeps the frames and delivers them in order once the connection is back. A batch that was in flight when the connection broke is sent again, so
delivery is at least once: consumers keep the highest ``rev`` per ``segment_id`` (or skip
``seq`` values they have seen). "Confirmed" means the server has the frame; like any NATS core
message it can still die with a server that crashes before passing it on.

Overflow policy: the oldest partial is dropped first (a later revision supersedes it); finals,
events and errors are dropped, oldest first, only when nothing but them is queued.
"""

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import nats
import nats.errors
from nats.aio.client import Client

from config.settings import NatsSettings
from pipeline.sink import AnyFrame
from pipeline.tasks import TaskSet, cancel_and_wait
from protocol import CaptionFrame, ErrorFrame, EventFrame, Subjects
from protocol.subjects import InvalidIdError

log = logging.getLogger(__name__)


def subject_for(subjects: Subjects, frame: AnyFrame) -> str:
    """The subject a frame is published on; raises ``InvalidIdError`` if it has none."""
    if isinstance(frame, CaptionFrame):
        return subjects.captions(frame.room, frame.participant)
    if isinstance(frame, EventFrame):
        return subjects.events(frame.room)
    if isinstance(frame, ErrorFrame) and frame.room is not None:
        if frame.participant is not None:
            return subjects.captions(frame.room, frame.participant)
        return subjects.events(frame.room)
    raise InvalidIdError("room", "", "an error frame without a room has no subject")


@dataclass(eq=False, slots=True)
class OutboxEntry:
    subject: str
    frame: AnyFrame
    partial: bool
    dropped: bool = False


class Outbox:
    """FIFO of frames waiting for NATS, bounded to ``limit``; see the module doc for the policy."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"outbox limit must be at least 1, got {limit}")
        self.limit = limit
        self.dropped_partials = 0
        self.dropped_finals = 0
        self._entries: deque[OutboxEntry] = deque()
        # The live partials of _entries, in the same order; dropped entries stay in _entries
        # as tombstones until the next take() or compaction.
        self._partials: deque[OutboxEntry] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def put(self, entry: OutboxEntry) -> OutboxEntry | None:
        """Queue one entry; returns the entry dropped to make room, if any."""
        victim = self._drop_one() if self._size >= self.limit else None
        self._entries.append(entry)
        if entry.partial:
            self._partials.append(entry)
        self._size += 1
        return victim

    def take(self, count: int) -> list[OutboxEntry]:
        """Remove and return up to ``count`` of the oldest entries."""
        batch: list[OutboxEntry] = []
        while self._entries and len(batch) < count:
            entry = self._entries.popleft()
            if entry.dropped:
                continue
            if entry.partial:
                self._partials.popleft()
            batch.append(entry)
        self._size -= len(batch)
        return batch

    def restore(self, batch: list[OutboxEntry]) -> list[OutboxEntry]:
        """Put a taken batch back in front; returns what had to be dropped to stay in bounds."""
        for entry in reversed(batch):
            self._entries.appendleft(entry)
            if entry.partial:
                self._partials.appendleft(entry)
        self._size += len(batch)
        dropped = []
        while self._size > self.limit:
            dropped.append(self._drop_one())
        return dropped

    def _drop_one(self) -> OutboxEntry:
        if self._partials:
            victim = self._partials.popleft()
            victim.dropped = True
            self.dropped_partials += 1
            if len(self._entries) > 2 * self.limit:
                self._entries = deque(entry for entry in self._entries if not entry.dropped)
        else:
            victim = self._entries.popleft()
            while victim.dropped:
                victim = self._entries.popleft()
            self.dropped_finals += 1
        self._size -= 1
        return victim


@dataclass(frozen=True)
class PublisherStats:
    """``pending`` counts every frame not yet confirmed by the server, queued or in flight."""

    published: int
    pending: int
    dropped_partials: int
    dropped_finals: int
    rejected: int
    reconnects: int
    connected: bool


class NatsPublisher:
    """A :class:`~pipeline.sink.FrameSink` that publishes on NATS (see the module doc).

    ``async with NatsPublisher(url, Subjects()) as pub: pub.emit(frame)``
    """

    def __init__(
        self,
        url: str,
        subjects: Subjects,
        outbox_limit: int = 10_000,
        *,
        client_name: str = "roomscribe-publisher",
        reconnect_wait: float = 0.5,
        flush_timeout: float = 2.0,
        batch_size: int = 256,
        drain_timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.subjects = subjects
        self.client_name = client_name
        self.reconnect_wait = reconnect_wait
        self.flush_timeout = flush_timeout
        self.batch_size = batch_size
        self.drain_timeout = drain_timeout
        self._outbox = Outbox(outbox_limit)
        self._nc: Client | None = None
        self._tasks = TaskSet(f"nats publisher {client_name}")
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._connected = asyncio.Event()
        self._closing = False
        self._overflowing = False
        self._published = 0
        self._in_flight = 0
        self._rejected = 0
        self._reconnects = 0
        self._unreachable_logged = False

    @classmethod
    def from_settings(cls, url: str, settings: NatsSettings) -> Self:
        return cls(
            url,
            Subjects(settings.subject_prefix),
            settings.outbox_limit,
            reconnect_wait=settings.reconnect_wait_s,
            flush_timeout=settings.flush_timeout_s,
        )

    @property
    def stats(self) -> PublisherStats:
        return PublisherStats(
            published=self._published,
            pending=len(self._outbox) + self._in_flight,
            dropped_partials=self._outbox.dropped_partials,
            dropped_finals=self._outbox.dropped_finals,
            rejected=self._rejected,
            reconnects=self._reconnects,
            connected=self.is_connected,
        )

    @property
    def is_connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def start(self) -> None:
        """Starts connecting in the background; frames emitted meanwhile wait in the outbox."""
        if self._task is None:
            self._task = self._tasks.spawn(self._run(), "connection")

    async def wait_connected(self) -> None:
        await self._connected.wait()

    def emit(self, frame: AnyFrame) -> None:
        if self._closing:
            self._reject(frame, "publisher is closed")
            return
        try:
            subject = subject_for(self.subjects, frame)
        except InvalidIdError as exc:
            self._reject(frame, str(exc))
            return
        partial = isinstance(frame, CaptionFrame) and frame.type == "partial"
        victim = self._outbox.put(OutboxEntry(subject, frame, partial))
        if victim is not None:
            self._on_overflow()
        self._wake.set()

    def _reject(self, frame: AnyFrame, reason: str) -> None:
        self._rejected += 1
        log.warning("frame %s not published: %s", frame.type, reason)

    def _on_overflow(self) -> None:
        if not self._overflowing:
            self._overflowing = True
            log.warning(
                "NATS outbox full (%d frames): dropping the oldest partials, then the oldest finals",
                self._outbox.limit,
            )

    async def _run(self) -> None:
        nc = await self._connect()
        while True:
            if nc.is_closed:
                # nats-py gave up on the connection for good; start a fresh one.
                nc = await self._connect()
            if not self._outbox:
                if self._closing:
                    return
                if self._overflowing:
                    self._overflowing = False
                    log.info(
                        "NATS outbox drained; dropped so far: %d partials, %d finals",
                        self._outbox.dropped_partials,
                        self._outbox.dropped_finals,
                    )
                self._wake.clear()
                await self._wake.wait()
                continue
            if not nc.is_connected:
                self._connected.clear()
                await self._connected.wait()
                continue
            batch = self._outbox.take(self.batch_size)
            self._in_flight = len(batch)
            try:
                await self._send(nc, batch)
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                self._in_flight = 0
                if self._outbox.restore(batch):
                    self._on_overflow()
                log.debug("batch of %d frames not confirmed (%r), will resend", len(batch), exc)
                await asyncio.sleep(self.reconnect_wait)
            except asyncio.CancelledError:
                self._in_flight = 0
                self._outbox.restore(batch)
                raise
            else:
                self._in_flight = 0

    async def _send(self, nc: Client, batch: list[OutboxEntry]) -> None:
        rejected = 0
        for entry in batch:
            try:
                await nc.publish(entry.subject, entry.frame.model_dump_json().encode())
            except nats.errors.MaxPayloadError:
                rejected += 1
                log.error(
                    "frame %s on %s exceeds the server's max payload",
                    entry.frame.type,
                    entry.subject,
                )
        async with asyncio.timeout(self.flush_timeout):
            # nats-py writes flush()'s PING straight to the socket, ahead of publishes still in
            # its buffer; only a PING sent after them proves the server has them. So first wait
            # until its flusher has written the buffer (private, but exact; nats-py is pinned).
            await nc._flush_pending(force_flush=True)
            await nc.flush()
        self._rejected += rejected
        self._published += len(batch) - rejected

    async def _connect(self) -> Client:
        nc = await nats.connect(
            self.url,
            name=self.client_name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=self.reconnect_wait,
            connect_timeout=2,
            # No client-side buffering while disconnected: a publish then fails and the frame
            # stays in our outbox instead of nats-py's pending buffer.
            pending_size=0,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            error_cb=self._on_error,
            closed_cb=self._on_closed,
        )
        self._nc = nc
        self._connected.set()
        self._wake.set()
        log.info("publishing frames on %s", self.url)
        return nc

    async def _on_disconnected(self) -> None:
        self._connected.clear()
        if not self._closing:
            log.warning(
                "NATS connection lost; frames wait in the outbox (%d now)", len(self._outbox)
            )

    async def _on_reconnected(self) -> None:
        self._reconnects += 1
        self._unreachable_logged = False
        self._connected.set()
        log.info("NATS reconnected; delivering %d waiting frames", len(self._outbox))

    async def _on_closed(self) -> None:
        # Wakes the pump so that it notices a connection nats-py has given up on.
        self._connected.set()
        self._wake.set()

    async def _on_error(self, exc: Exception) -> None:
        if not self._unreachable_logged:
            self._unreachable_logged = True
            log.warning(
                "NATS at %s: %r (reconnecting every %.1f s)",
                self.url,
                exc,
                self.reconnect_wait,
            )
        else:
            log.debug("NATS error: %r", exc)

    async def close(self) -> None:
        """Delivers what is queued (waiting up to ``drain_timeout`` s), then disconnects."""
        self._closing = True
        self._wake.set()
        task, self._task = self._task, None
        try:
            if task is not None:
                try:
                    await asyncio.wait({task}, timeout=self.drain_timeout)
                finally:
                    if not task.done():
                        log.warning(
                            "NATS publisher closed with %d frames undelivered", len(self._outbox)
                        )
                        await cancel_and_wait(task)
        finally:
            nc, self._nc = self._nc, None
            if nc is not None and not nc.is_closed:
                await nc.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
