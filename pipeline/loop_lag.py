"""How late the event loop runs ready work.

A task sleeps ``interval_s`` again and again and records how much later than asked it woke;
anything that holds the loop (or the GIL) shows up as lag. The last ``window`` wake-ups are
kept; :meth:`LoopLag.register` exports their p50, p99 and max as
``roomscribe_event_loop_lag_seconds{quantile="0.5"|"0.99"|"max"}``.
"""

import asyncio
from collections import deque

from prometheus_client import CollectorRegistry, Gauge


class LoopLag:
    def __init__(self, interval_s: float = 0.05, window: int = 6000) -> None:
        self.interval_s = interval_s
        self._lags: deque[float] = deque(maxlen=window)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self._lags.append(max(loop.time() - asked, 0.0))

    def quantile(self, q: float) -> float:
        """Lag at quantile ``q`` (0..1) of the window; 0 before the first wake-up."""
        if not self._lags:
            return 0.0
        ordered = sorted(self._lags)
        return ordered[min(int(q * len(ordered)), len(ordered) - 1)]

    def recent(self, q: float, seconds: float) -> float:
        """Lag at quantile ``q`` over about the last ``seconds`` of wake-ups."""
        count = max(1, int(seconds / self.interval_s))
        recent = sorted(list(self._lags)[-count:])
        return recent[min(int(q * len(recent)), len(recent) - 1)] if recent else 0.0

    @property
    def max(self) -> float:
        return max(self._lags, default=0.0)

    def register(self, registry: CollectorRegistry) -> None:
        gauge = Gauge(
            "roomscribe_event_loop_lag_seconds",
            "how late the event loop woke a sleeping task, over the recent window",
            ("quantile",),
            registry=registry,
        )
        gauge.labels("0.5").set_function(lambda: self.quantile(0.5))
        gauge.labels("0.99").set_function(lambda: self.quantile(0.99))
        gauge.labels("max").set_function(lambda: self.max)
