"""What the API app runs on; the ``serve`` process builds one and hands it to ``create_app``."""

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter
from nats.aio.client import Client as NatsClient
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from api.metrics import ApiMetrics
from config.settings import Settings
from pipeline.jobs import JobStore
from pipeline.webhooks import Notifier, WebhookDispatcher


@dataclass
class Services:
    settings: Settings
    nc: NatsClient
    store: JobStore
    notifier: Notifier
    runtime: Any | None = None
    routers: list[APIRouter] = field(default_factory=list)
    # path prefix -> credentials it accepts besides API keys (the bridge's bearer tokens)
    scoped_tokens: dict[str, list[str]] = field(default_factory=dict)
    run_worker: bool = False
    publisher: Any | None = None  # the live caption publisher (its outbox is in /metrics)
    metrics: ApiMetrics = field(default_factory=ApiMetrics)
    _running: list[Any] = field(default_factory=list, init=False, repr=False)

    @classmethod
    async def open(
        cls,
        settings: Settings,
        nc: NatsClient,
        runtime: Any | None = None,
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
        """Start the in-process worker and webhook sender (if asked) and hook ended calls."""
        self.metrics.scrape(self._scraped)
        if self.runtime is not None:
            from pipeline.postcall import call_ended_hook

            self.runtime.call_ended_hooks.append(
                call_ended_hook(self.store, self.notifier, self.settings)
            )
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

    async def stop(self) -> None:
        while self._running:
            await self._running.pop().stop()
