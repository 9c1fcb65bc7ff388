"""What the API app runs on; the ``serve`` process builds one and hands it to ``create_app``."""

import asyncio
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from nats.aio.client import Client as NatsClient
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from api.metrics import ApiMetrics
from config.settings import Settings
from pipeline.jobs import JobStore
from pipeline.loop_lag import LoopLag
from pipeline.runtime import LiveRuntime
from pipeline.tasks import TaskSet, stop_within
from pipeline.webhooks import Notifier, WebhookDispatcher

if TYPE_CHECKING:
    from pipeline.handover import CallHandover

log = logging.getLogger("roomscribe.services")


@dataclass
class Services:
    settings: Settings
    nc: NatsClient
    store: JobStore
    notifier: Notifier
    runtime: LiveRuntime | None = None
    routers: list[APIRouter] = field(default_factory=list)
    # path prefix -> credentials it accepts besides API keys (the bridge's bearer tokens)
    scoped_tokens: dict[str, list[str]] = field(default_factory=dict)
    # paths open without an API key besides api.public_paths (they check their own signature)
    public_paths: list[str] = field(default_factory=list)
    # paths whose CORS preflight names the POST body type they accept (WHIP endpoints)
    accept_post: list[tuple[re.Pattern[str], str]] = field(default_factory=list)
    run_worker: bool = False
    bot_id: str | None = None  # this process among bots sharing one NATS (room claims)
    publisher: Any | None = None  # the live caption publisher (its outbox is in /metrics)
    live_calls: Any | None = None  # pipeline.live_calls.LiveCalls once started
    metrics: ApiMetrics = field(default_factory=ApiMetrics)
    loop_lag: LoopLag = field(default_factory=LoopLag)
    _running: list[Any] = field(default_factory=list, init=False, repr=False)
    _tasks: TaskSet = field(default_factory=lambda: TaskSet("services"), init=False, repr=False)

    def __post_init__(self) -> None:
        self.loop_lag.register(self.metrics.registry)

    @classmethod
    async def open(
        cls,
        settings: Settings,
        nc: NatsClient,
        runtime: LiveRuntime | None = None,
        routers: list[APIRouter] | None = None,
        run_worker: bool | None = None,
    ) -> "Services":
        """Open the job store and notifier on ``nc``; ``run_worker`` defaults to ``postcall.run_worker``."""
        prefix = settings.nats.subject_prefix
        return cls(
            settings=settings,
            nc=nc,
            store=await JobStore.open(nc, prefix),
            notifier=await Notifier.open(nc, prefix),
            runtime=runtime,
            routers=list(routers or []),
            run_worker=settings.postcall.run_worker if run_worker is None else run_worker,
        )

    async def start(self) -> None:
        """Hand ended calls over to post-call (and the calls a previous run left), start the
        in-process worker (if asked) and the webhook sender."""
        self.metrics.scrape(self._scraped)
        self._tasks.spawn(self.loop_lag.run(), "event-loop lag")
        if self.runtime is not None:
            from pipeline.handover import CallHandover

            handover = CallHandover(self.store, self.notifier, self.settings)
            self.runtime.handover = handover
            await handover.recover(self.runtime.open_calls)
            self._tasks.spawn(self._retry_handovers(handover, self.runtime), "hand-over retries")
            from pipeline.live_calls import LiveCalls

            runtime = self.runtime
            self.live_calls = LiveCalls(
                self.nc,
                self.store,
                handover,
                self.settings,
                self.bot_id or uuid.uuid4().hex[:12],
                lambda: runtime.open_calls,
            )
            await self.live_calls.start()
            self._running.append(self.live_calls)
        if self.run_worker:
            from pipeline.worker import Worker

            worker = Worker(self.settings, self.store, self.notifier)
            await worker.start()
            self._running.append(worker)
        dispatcher = WebhookDispatcher(
            self.notifier, self.settings.postcall, self.settings.api.allow_private_urls
        )
        await dispatcher.start()
        self._running.append(dispatcher)

    def _scraped(self) -> Iterator[Metric]:
        stats = getattr(self.publisher, "stats", None)
        if stats is not None:
            yield GaugeMetricFamily(
                "roomscribe_publisher_outbox_depth",
                "caption frames waiting for NATS",
                value=stats.pending,
            )
            dropped = CounterMetricFamily(
                "roomscribe_publisher_dropped",
                "caption frames dropped by the full outbox, by kind",
                labels=["kind"],
            )
            dropped.add_metric(["partial"], stats.dropped_partials)
            dropped.add_metric(["final"], stats.dropped_finals)
            yield dropped
        failures = CounterMetricFamily(
            "roomscribe_job_failures", "jobs failed by this process, by error code", labels=["code"]
        )
        refused = CounterMetricFamily(
            "roomscribe_webhooks_refused",
            "webhook deliveries the outbound guard refused at delivery time",
        )
        for running in self._running:
            for code, count in getattr(running, "failures", {}).items():
                failures.add_metric([code], count)
            if isinstance(running, WebhookDispatcher):
                refused.add_metric([], running.refused)
        yield failures
        yield refused

    async def _retry_handovers(self, handover: "CallHandover", runtime: LiveRuntime) -> None:
        while True:
            await asyncio.sleep(self.settings.postcall.handover_retry_s)
            try:
                await handover.recover(runtime.open_calls)
            except Exception:
                log.exception("hand-over retry failed; trying again later")

    def problems(self) -> list[str]:
        """What keeps the service from being healthy (empty: healthy)."""
        found = [] if self.nc.is_connected else ["NATS is not connected"]
        found += [
            "the job worker loop has stopped"
            for running in self._running
            if getattr(running, "alive", True) is False
        ]
        return found

    async def stop(self) -> None:
        while self._running:
            running = self._running.pop()
            await stop_within(type(running).__name__, running.stop)
        await self._tasks.aclose()
