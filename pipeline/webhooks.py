"""Job events: published on NATS and delivered, signed and retried, to webhook URLs.

An event is sent at most once per (job id, event type): the first :meth:`Notifier.notify`
creates the delivery record in KV bucket ``<base>_webhooks`` (key ``<job id>.<event type>``)
and any later call for the same pair is a no-op. Deliveries are queued on the work-queue
stream ``<BASE>_WEBHOOKS`` (subject ``<prefix>.v1.webhooks.deliver.<key>``, at most one
message per subject, so a delivery is never queued twice) and retried with
exponential backoff and full jitter until ``webhook_max_attempts``; the KV record is the
delivery log. On start the dispatcher re-queues every record still pending, so a delivery
survives a restart at any point.

NATS subject of the events: ``<prefix>.v1.jobevents.<job id>`` (body = the webhook body).
"""

import contextlib
import hashlib
import json
import logging
import random
import time
from typing import Any

import httpx
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from config.settings import PostCallSettings
from pipeline.jobs import bucket_base, open_kv
from pipeline.js_read import kv_keys
from pipeline.pull import fetch_forever
from pipeline.tasks import TaskSet
from pipeline.url_fetch import DownloadError, guarded_client
from protocol.subjects import Subjects
from protocol.webhooks import (
    SIGNATURE_HEADER,
    Delivery,
    DeliveryAttempt,
    WebhookEvent,
    WebhookEventType,
    sign,
)

log = logging.getLogger("roomscribe.webhooks")

_MAX_MSGS_PER_SUBJECT = 10077  # "maximum messages per subject exceeded"


def backoff_delay(attempt: int, base_s: float, cap_s: float) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2^attempt)]."""
    return random.uniform(0.0, min(cap_s, base_s * 2**attempt))


def event_id(job_id: str, event: WebhookEventType) -> str:
    return "evt_" + hashlib.sha256(f"{job_id}/{event.value}".encode()).hexdigest()[:24]


def delivery_key(job_id: str, event: WebhookEventType) -> str:
    return f"{job_id}.{event.value}"


class Notifier:
    """Creates events (deduplicated), publishes them on NATS and queues their webhooks."""

    def __init__(self, nc: NatsClient, prefix: str, kv: Any) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.prefix = prefix
        self.stream = f"{bucket_base(prefix).upper()}_WEBHOOKS"
        self.subjects = Subjects(prefix)
        self.deliver_subjects = self.subjects.webhook_deliveries
        self.bucket = f"{bucket_base(prefix)}_webhooks"
        self.kv = kv

    @classmethod
    async def open(cls, nc: NatsClient, prefix: str = "roomscribe") -> "Notifier":
        js = nc.jetstream()
        notifier = cls(nc, prefix, await open_kv(js, f"{bucket_base(prefix)}_webhooks"))
        try:
            await js.stream_info(notifier.stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(
                StreamConfig(
                    name=notifier.stream,
                    subjects=[Subjects(prefix).webhooks],
                    retention=RetentionPolicy.WORK_QUEUE,
                    storage=StorageType.FILE,
                    max_msgs_per_subject=1,
                    discard=DiscardPolicy.NEW,
                    discard_new_per_subject=True,
                )
            )
        return notifier

    def events_subject(self, job_id: str) -> str:
        return self.subjects.job_events(job_id)

    async def notify(
        self, job_id: str, event: WebhookEventType, data: dict[str, Any], url: str | None
    ) -> bool:
        """Publish the event and queue its webhook; False when it was already sent."""
        body = WebhookEvent(
            id=event_id(job_id, event), type=event, created_at=time.time(), data=data
        )
        key = delivery_key(job_id, event)
        delivery = Delivery(
            key=key, job_id=job_id, event=body, url=url, status="pending" if url else "no_url"
        )
        try:
            await self.kv.create(key, delivery.model_dump_json().encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        await self.nc.publish(self.events_subject(job_id), body.model_dump_json().encode())
        if url:
            await self.queue(key)
        return True

    async def relay(
        self,
        job_id: str,
        name: str,
        event: WebhookEventType,
        data: dict[str, Any],
        payload: dict[str, Any],
        url: str,
    ) -> bool:
        """Queue one more delivery of ``event`` (already published), posted as ``payload``
        under key ``<job id>.relay.<name>``; False when it was queued before."""
        key = f"{job_id}.relay.{name}"  # never one of the job's own event keys
        body = WebhookEvent(
            id=event_id(job_id, event), type=event, created_at=time.time(), data=data
        )
        delivery = Delivery(
            key=key, job_id=job_id, event=body, url=url, status="pending", payload=payload
        )
        try:
            await self.kv.create(key, delivery.model_dump_json().encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        await self.queue(key)
        return True

    async def queue(self, key: str) -> None:
        """Queue one delivery; a no-op while a message for it is already queued."""
        try:
            await self.js.publish(
                self.subjects.webhook_delivery(key), key.encode(), stream=self.stream
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code != _MAX_MSGS_PER_SUBJECT:
                raise

    async def deliveries(self, job_id: str) -> list[Delivery]:
        found = []
        for key in await kv_keys(self.js, self.bucket, f"{job_id}."):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                entry = await self.kv.get(key)
                if entry.value:
                    found.append(Delivery.model_validate_json(entry.value))
        return found

    async def forget(self, job_id: str) -> None:
        for delivery in await self.deliveries(job_id):
            await self.kv.purge(delivery.key)


class WebhookDispatcher:
    """Consumes queued deliveries and POSTs them; any number may run against one stream.

    Every POST goes through the outbound guard at delivery time: only public addresses
    unless ``allow_private`` (the operator's own ``postcall.webhook_url`` is trusted); a
    refused URL fails the delivery at once (``FORBIDDEN_URL`` in its attempt).
    """

    durable = "webhook-senders"

    def __init__(
        self, notifier: Notifier, settings: PostCallSettings, allow_private: bool = False
    ) -> None:
        self.notifier = notifier
        self.settings = settings
        self.allow_private = allow_private
        self._tasks = TaskSet("webhook dispatcher")
        self._stopping = False
        self._client: httpx.AsyncClient | None = None
        self._trusted: httpx.AsyncClient | None = None
        self.refused = 0

    async def start(self) -> None:
        timeout = self.settings.webhook_timeout_s
        self._client = guarded_client(self.allow_private, timeout)
        self._trusted = guarded_client(True, timeout)
        await self._requeue_pending()
        js = self.notifier.js
        self._sub = await js.pull_subscribe(
            self.notifier.deliver_subjects,
            durable=self.durable,
            stream=self.notifier.stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.settings.webhook_timeout_s + 30.0,
                max_deliver=-1,
            ),
        )
        self._tasks.spawn(self._run(), "deliveries")

    async def stop(self) -> None:
        self._stopping = True
        await self._tasks.aclose()
        for client in (self._client, self._trusted):
            if client is not None:
                await client.aclose()
        self._client = self._trusted = None

    async def _requeue_pending(self) -> None:
        for key in await kv_keys(self.notifier.js, self.notifier.bucket):
            try:
                entry = await self.notifier.kv.get(key)
            except nats.js.errors.NotFoundError:
                continue
            if entry.value and Delivery.model_validate_json(entry.value).status == "pending":
                await self.notifier.queue(key)

    async def _run(self) -> None:
        async for msg in fetch_forever(self._sub, lambda: self._stopping):
            try:
                await self._handle(msg)
            except (nats.errors.Error, OSError):
                log.warning(
                    "webhook delivery %s interrupted; it will be retried",
                    msg.data,
                    exc_info=True,
                )
            except ValueError:  # a corrupt delivery record: retrying cannot help
                log.exception("dropping webhook delivery %r", msg.data[:200])
                await msg.term()

    async def _handle(self, msg: Msg) -> None:
        key = msg.data.decode()
        kv = self.notifier.kv
        try:
            entry = await kv.get(key)
        except nats.js.errors.NotFoundError:
            await msg.ack()
            return
        delivery = Delivery.model_validate_json(entry.value)
        if delivery.status != "pending" or not delivery.url:
            await msg.ack()
            return
        attempt = await self._post(delivery)
        delivery.attempts.append(attempt)
        ok = attempt.status_code is not None and 200 <= attempt.status_code < 300
        if ok:
            delivery.status = "delivered"
        elif attempt.forbidden:
            self.refused += 1
            delivery.status = "failed"
            log.warning("webhook %s: %s", key, attempt.error)
        elif len(delivery.attempts) >= self.settings.webhook_max_attempts:
            delivery.status = "failed"
            log.warning(
                "webhook %s to %s failed after %d attempts",
                key,
                delivery.url,
                len(delivery.attempts),
            )
        await kv.put(key, delivery.model_dump_json().encode())
        if delivery.status == "pending":
            await msg.nak(
                delay=backoff_delay(
                    len(delivery.attempts),
                    self.settings.webhook_backoff_s,
                    self.settings.webhook_backoff_max_s,
                )
            )
        else:
            await msg.ack()

    async def _post(self, delivery: Delivery) -> DeliveryAttempt:
        assert self._client is not None and self._trusted is not None
        assert delivery.url is not None
        trusted = delivery.url in (
            self.settings.webhook_url,
            self.settings.recording_platform_webhook_url,
        )
        body = (
            delivery.event.model_dump_json().encode()
            if delivery.payload is None
            else json.dumps(delivery.payload).encode()
        )
        headers = {"Content-Type": "application/json", "User-Agent": "roomscribe-webhooks/1"}
        if self.settings.webhook_secret:
            headers[SIGNATURE_HEADER] = sign(self.settings.webhook_secret, body, int(time.time()))
        now = time.time()
        client = self._trusted if trusted else self._client
        try:
            # the answer's body is never read: only its status counts
            async with client.stream(
                "POST", delivery.url, content=body, headers=headers
            ) as response:
                status = response.status_code
        except DownloadError as exc:
            return DeliveryAttempt(at=now, error=f"{exc.code}: {exc.message}", forbidden=True)
        except httpx.HTTPError as exc:
            return DeliveryAttempt(at=now, error=f"{type(exc).__name__}: {exc}")
        return DeliveryAttempt(at=now, status_code=status)


def event_data(record: Any, **extra: Any) -> dict[str, Any]:
    """The ``data`` of a job event: the public job record plus ``extra``."""
    data = json.loads(
        record.model_dump_json(include={"id", "kind", "status", "error", "source", "results"})
    )
    data.update(extra)
    return data
