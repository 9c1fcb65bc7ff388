"""Whether this process can take one more live stream, from what it measures.

A fixed stream count cannot know how heavy each stream is (talking or silent, one model or
two); what it protects is visible directly: the event loop that handles packets running late,
recognition falling behind the audio, the kernel dropping datagrams because nobody read them in
time. Past any threshold new streams are refused (``CAPACITY``, 503 + ``Retry-After``) so the
streams already admitted keep their real-time budget.
"""

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from config.settings import LimitsSettings
from pipeline.loop_lag import LoopLag


@dataclass(frozen=True)
class HeadroomLimits:
    max_loop_lag_s: float = 0.25  # p95 over the window; 0 = not checked
    max_backlog_s: float = 10.0  # 0 = not checked
    window_s: float = 10.0
    refuse_on_udp_drops: bool = True

    @classmethod
    def from_settings(cls, limits: LimitsSettings) -> "HeadroomLimits":
        return cls(
            limits.max_loop_lag_ms / 1000,
            limits.max_backlog_s,
            limits.headroom_window_s,
            limits.refuse_on_udp_drops,
        )


class Headroom:
    def __init__(
        self,
        limits: HeadroomLimits,
        loop_lag: LoopLag | None = None,
        backlog_s: Callable[[], float] | None = None,
        udp_drops: Callable[[], int | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.loop_lag = loop_lag
        self.backlog_s = backlog_s
        self.udp_drops = udp_drops
        self.clock = clock
        self._drops: deque[tuple[float, int]] = deque()

    def shortage(self) -> str | None:
        """Why no stream should start now, or None when there is room."""
        limits = self.limits
        if self.loop_lag is not None and limits.max_loop_lag_s > 0:
            lag = self.loop_lag.recent(0.95, limits.window_s)
            if lag > limits.max_loop_lag_s:
                return (
                    f"the event loop runs {lag * 1000:.0f} ms late (p95, limit "
                    f"{limits.max_loop_lag_s * 1000:.0f} ms)"
                )
        if self.backlog_s is not None and limits.max_backlog_s > 0:
            behind = self.backlog_s()
            if behind > limits.max_backlog_s:
                return (
                    f"recognition is {behind:.1f} s behind the audio "
                    f"(limit {limits.max_backlog_s:.1f} s)"
                )
        if self.udp_drops is not None and limits.refuse_on_udp_drops:
            dropped = self._recent_drops()
            if dropped:
                return f"the kernel dropped {dropped} datagrams in the last {limits.window_s:.0f} s"
        return None

    def _recent_drops(self) -> int:
        assert self.udp_drops is not None
        total = self.udp_drops()
        if total is None:
            return 0
        now = self.clock()
        self._drops.append((now, total))
        while len(self._drops) > 1 and self._drops[1][0] <= now - self.limits.window_s:
            self._drops.popleft()
        since, before = self._drops[0]
        if since < now - 2 * self.limits.window_s:  # no recent look: no evidence either way
            self._drops.popleft()
            return 0
        return total - before
