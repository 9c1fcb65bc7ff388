"""Admission control of live streams, shared by WebSocket sessions and WebRTC tracks.

Past ``max_streams`` new work is refused at once (WebSocket error ``CAPACITY``, HTTP 503 with
``Retry-After``) so the streams already admitted keep their real-time budget; nothing queues.
Each admitted stream holds a :class:`Lease` that carries its limits: the longest it may run
(``max_duration_s``) and how long it may go without audio (``idle_timeout_s``).
"""

import logging
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge

from config.settings import LimitsSettings
from pipeline.call.headroom import Headroom
from protocol.errors import ErrorCode, ServiceError

log = logging.getLogger(__name__)


class CapacityError(ServiceError):
    """503 with ``Retry-After``: every live stream slot is taken."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(503, ErrorCode.CAPACITY, message, {"Retry-After": str(retry_after_s)})


class StreamKind(StrEnum):
    WEBSOCKET = "websocket"
    WEBRTC = "webrtc"


@dataclass(eq=False)
class Lease:
    kind: str
    max_duration_s: float
    idle_timeout_s: float
    started: float = field(default_factory=time.monotonic)
    released: bool = False

    @property
    def deadline(self) -> float:
        """``time.monotonic()`` at which the stream has run its maximum duration."""
        return self.started + self.max_duration_s


class Admission:
    """Counts live streams against one limit (``max_streams`` 0 = no limit)."""

    def __init__(
        self,
        max_streams: int,
        max_duration_s: float,
        idle_timeout_s: float,
        *,
        retry_after_s: int = 5,
        registry: CollectorRegistry | None = None,
        headroom: Headroom | None = None,
    ) -> None:
        if max_streams < 0 or max_duration_s <= 0 or idle_timeout_s <= 0:
            raise ValueError("max_streams >= 0 and positive durations expected")
        self.max_streams = max_streams
        self.max_duration_s = max_duration_s
        self.idle_timeout_s = idle_timeout_s
        self.retry_after_s = retry_after_s
        self.headroom = headroom
        self.last_shortage = "no live stream can start now"
        self._leases: set[Lease] = set()
        self._lock = threading.Lock()  # the bridge may release from a track's thread
        registry = registry if registry is not None else CollectorRegistry()
        self._active = Gauge(
            "roomscribe_live_streams",
            "live streams admitted now, by kind",
            ("kind",),
            registry=registry,
        )
        self._refused = Counter(
            "roomscribe_live_streams_refused",
            "live streams refused for capacity, by kind",
            ("kind",),
            registry=registry,
        )
        limit = Gauge(
            "roomscribe_live_streams_limit", "max_streams (0 = no limit)", registry=registry
        )
        limit.set(max_streams)
        for kind in StreamKind:
            self._active.labels(kind.value)
            self._refused.labels(kind.value)

    @classmethod
    def from_settings(
        cls,
        limits: LimitsSettings,
        registry: CollectorRegistry | None = None,
        headroom: Headroom | None = None,
    ) -> "Admission":
        return cls(
            limits.max_streams,
            limits.max_stream_s,
            limits.idle_timeout_s,
            retry_after_s=limits.retry_after_s,
            registry=registry,
            headroom=headroom,
        )

    def _shortage(self) -> str | None:
        """Why one more stream cannot start (the count limit, then measured headroom)."""
        if self.full:
            return f"all {self.max_streams} live streams are in use"
        return self.headroom.shortage() if self.headroom is not None else None

    @property
    def full(self) -> bool:
        return self.max_streams > 0 and len(self._leases) >= self.max_streams

    def active(self, kind: str | None = None) -> int:
        with self._lock:
            return sum(1 for lease in self._leases if kind is None or lease.kind == kind)

    def try_acquire(self, kind: str) -> Lease | None:
        """A lease for one more stream, or None (counted as refused) when at the limit."""
        with self._lock:
            shortage = self._shortage()
            if shortage is not None:
                self._refuse(kind, shortage)
                return None
            lease = Lease(kind, self.max_duration_s, self.idle_timeout_s)
            self._leases.add(lease)
            self._active.labels(kind).inc()
            return lease

    def release(self, lease: Lease) -> None:
        """Give the stream's slot back; releasing twice is harmless."""
        with self._lock:
            if lease.released or lease not in self._leases:
                return
            lease.released = True
            self._leases.discard(lease)
            self._active.labels(lease.kind).dec()

    def _refuse(self, kind: str, shortage: str) -> None:
        self._refused.labels(kind).inc()
        self.last_shortage = shortage
        log.warning("refused a %s stream: %s (%d running)", kind, shortage, len(self._leases))

    def capacity_error(self) -> CapacityError:
        """The error of the last refusal."""
        return CapacityError(
            f"{self.last_shortage}; retry in {self.retry_after_s} s", self.retry_after_s
        )

    def check(self, kind: str) -> None:
        """For HTTP routes that lead to a stream: raise 503 (counted) when none can start now."""
        with self._lock:
            shortage = self._shortage()
            if shortage is None:
                return
            self._refuse(kind, shortage)
        raise self.capacity_error()
