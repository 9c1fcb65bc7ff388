"""Prometheus metrics of one API app (own registry, so several apps can live in one process)."""

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE_LATEST", "ApiMetrics"]


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "roomscribe_http_requests",
            "HTTP requests by method, route template and status",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "roomscribe_http_request_duration_seconds",
            "HTTP request handling time",
            ("method", "route"),
            registry=self.registry,
        )
        self.jobs_submitted = Counter(
            "roomscribe_jobs_submitted",
            "jobs queued through the API",
            ("kind",),
            registry=self.registry,
        )
        self.upload_bytes = Counter(
            "roomscribe_upload_bytes", "audio bytes received in uploads", registry=self.registry
        )

        self.auth_failures = Counter(
            "roomscribe_auth_failures",
            "requests and sockets refused for a missing or unknown credential",
            ("surface",),
            registry=self.registry,
        )
        self.refused = Counter(
            "roomscribe_requests_refused",
            "requests refused before any work: body too large or too slow, forbidden URL, "
            "unknown model",
            ("reason",),
            registry=self.registry,
        )

    def scrape(self, read: Callable[[], Iterable[Metric]]) -> None:
        """Metrics read from their owners at each scrape (outbox depth, job failures...)."""
        self.registry.register(_Scraped(read))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Scraped(Collector):
    def __init__(self, read: Callable[[], Iterable[Metric]]) -> None:
        self.read = read

    def collect(self) -> Iterable[Metric]:
        return list(self.read())
