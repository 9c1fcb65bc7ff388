"""Webhook signing, deduplication, retries and durability, with a real nats-server."""

import asyncio
import json
import time
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from config.settings import PostCallSettings
from pipeline.webhooks import Notifier, WebhookDispatcher, backoff_delay
from protocol.webhooks import SIGNATURE_HEADER, WebhookEventType, sign, verify
from tests.webhook_receiver import webhook_receiver

SECRET = "s3cret"


def test_signature_round_trip_and_tampering() -> None:
    body = b'{"id": "evt_1"}'
    now = int(time.time())
    header = sign(SECRET, body, now)
    assert header.startswith(f"t={now},v1=")
    assert verify(SECRET, body, header)
    assert not verify(SECRET, body + b" ", header)
    assert not verify("other", body, header)
    assert not verify(SECRET, body, sign(SECRET, body, now - 3600))  # replayed too late
    assert not verify(SECRET, body, "garbage")


def test_backoff_has_full_jitter_under_an_exponential_cap() -> None:
    delays = [backoff_delay(3, 2.0, 600.0) for _ in range(500)]
    assert all(0.0 <= d <= 16.0 for d in delays)
    assert max(delays) > 12.0 and min(delays) < 4.0
    assert all(backoff_delay(30, 2.0, 60.0) <= 60.0 for _ in range(100))


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


def _settings(**changes: object) -> PostCallSettings:
    base = {"webhook_secret": SECRET, "webhook_backoff_s": 0.05, "webhook_backoff_max_s": 0.2}
    return PostCallSettings.model_validate({**base, **changes})


async def test_event_is_sent_once_signed_and_on_nats(nc: NatsClient) -> None:
    notifier = await Notifier.open(nc, "rs-hooks")
    seen: list[bytes] = []

    async def collect(msg: Msg) -> None:
        seen.append(msg.data)

    sub = await nc.subscribe("rs-hooks.v1.jobevents.>", cb=collect)
    with webhook_receiver() as receiver:
        dispatcher = WebhookDispatcher(notifier, _settings(), allow_private=True)
        await dispatcher.start()
        try:
            assert await notifier.notify(
                "tr_1", WebhookEventType.TRANSCRIPT_DONE, {"n": 1}, receiver.url
            )
            assert not await notifier.notify(
                "tr_1", WebhookEventType.TRANSCRIPT_DONE, {"n": 2}, receiver.url
            )
            assert await notifier.notify("tr_1", WebhookEventType.TRANSCRIPT_FAILED, {"n": 3}, None)
            (hit,) = await asyncio.to_thread(receiver.wait_for, 1)
            await asyncio.sleep(0.5)
            assert len(receiver.received) == 1
        finally:
            await dispatcher.stop()
    await sub.unsubscribe()
    assert verify(SECRET, hit.body, hit.headers[SIGNATURE_HEADER])
    event = json.loads(hit.body)
    assert set(event) == {"id", "type", "created_at", "data"}
    assert (event["type"], event["data"]) == ("transcript.done", {"n": 1})
    assert [json.loads(data)["type"] for data in seen] == ["transcript.done", "transcript.failed"]
    log = {d.event.type: d for d in await notifier.deliveries("tr_1")}
    assert log[WebhookEventType.TRANSCRIPT_DONE].status == "delivered"
    assert log[WebhookEventType.TRANSCRIPT_DONE].attempts[0].status_code == 200
    assert log[WebhookEventType.TRANSCRIPT_FAILED].status == "no_url"


async def test_failed_posts_are_retried_then_given_up(nc: NatsClient) -> None:
    notifier = await Notifier.open(nc, "rs-retry")
    with webhook_receiver() as receiver:
        receiver.fail_first = 2
        dispatcher = WebhookDispatcher(
            notifier, _settings(webhook_max_attempts=3), allow_private=True
        )
        await dispatcher.start()
        try:
            await notifier.notify("tr_2", WebhookEventType.TRANSCRIPT_DONE, {}, receiver.url)
            await asyncio.to_thread(receiver.wait_for, 3)
            receiver.fail_first = 100
            await notifier.notify("tr_3", WebhookEventType.TRANSCRIPT_DONE, {}, receiver.url)
            await asyncio.to_thread(receiver.wait_for, 6)
            await asyncio.sleep(0.6)
        finally:
            await dispatcher.stop()
    (ok,) = await notifier.deliveries("tr_2")
    assert ok.status == "delivered"
    assert [a.status_code for a in ok.attempts] == [500, 500, 200]
    (gave_up,) = await notifier.deliveries("tr_3")
    assert gave_up.status == "failed"
    assert [a.status_code for a in gave_up.attempts] == [500, 500, 500]
    assert len(receiver.received) == 6


async def test_pending_delivery_survives_a_restart(nc: NatsClient, nats_url: str) -> None:
    notifier = await Notifier.open(nc, "rs-durable")
    with webhook_receiver() as receiver:
        # queued while no dispatcher runs, then the queue message is lost: only the KV record is left
        await notifier.notify("tr_4", WebhookEventType.CALL_ENDED, {"call_id": "c1"}, receiver.url)
        await notifier.queue("tr_4.call.ended")  # already queued: not queued twice
        assert (await nc.jetstream().stream_info(notifier.stream)).state.messages == 1
        await nc.jetstream().purge_stream(notifier.stream)
        other = await nats.connect(nats_url)
        try:
            dispatcher = WebhookDispatcher(
                await Notifier.open(other, "rs-durable"), _settings(), allow_private=True
            )
            await dispatcher.start()
            (hit,) = await asyncio.to_thread(receiver.wait_for, 1)
            await dispatcher.stop()
        finally:
            await other.close()
    assert json.loads(hit.body)["data"] == {"call_id": "c1"}
    (delivery,) = await notifier.deliveries("tr_4")
    assert delivery.status == "delivered"
