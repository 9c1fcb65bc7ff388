"""A shutdown stage that hangs is named in the log and left behind; the rest still stops."""

import asyncio
import logging
from pathlib import Path

import pytest

from pipeline import tasks
from pipeline.tasks import TaskSet, stop_within
from tests.api_helpers import make_settings
from tests.service_helpers import served


async def _deaf(released: asyncio.Event) -> None:
    """Ignores cancellation until ``released``, as a buggy client library might."""
    while not released.is_set():
        try:
            await released.wait()
        except asyncio.CancelledError:
            continue


async def test_a_hung_stage_is_logged_and_the_next_ones_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []

    async def fine() -> None:
        ran.append("fine")

    async def broken() -> None:
        raise OSError("disk gone")

    released = asyncio.Event()
    with caplog.at_level(logging.ERROR, "roomscribe.tasks"):
        await stop_within("the deaf stage", lambda: _deaf(released), 0.2)
        await stop_within("a fine stage", fine, 0.2)
    released.set()
    assert ran == ["fine"]
    assert "the deaf stage did not stop within 0 s; the shutdown goes on without it" in (
        caplog.text
    )
    with pytest.raises(OSError, match="disk gone"):
        await stop_within("a broken stage", broken, 0.2)


async def test_a_task_that_outlives_its_cancellation_is_cancelled_again(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks, "RECANCEL_S", 0.1)
    swallowed = []

    async def retry_loop() -> None:
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if not swallowed:  # the first one is lost, as 3.11's wait_for may lose it
                    swallowed.append(True)
                    continue
                raise

    owned = TaskSet("owner")
    task = owned.spawn(retry_loop(), "retry")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, "roomscribe.tasks"):
        async with asyncio.timeout(5):
            await owned.aclose()
    assert swallowed and task.cancelled()
    assert "task owner:retry outlived a cancellation; cancelling it again" in caplog.text


async def test_the_service_stops_past_a_hung_component(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from pipeline.webhooks import WebhookDispatcher

    monkeypatch.setattr(tasks, "STOP_STAGE_S", 0.5)
    settings = make_settings(nats_url, tmp_path, postcall={"run_worker": True})
    released = asyncio.Event()
    monkeypatch.setattr(WebhookDispatcher, "stop", lambda self: _deaf(released))
    with caplog.at_level(logging.ERROR, "roomscribe.tasks"):
        async with asyncio.timeout(60), served(settings) as service:
            worker_running = [
                r for r in service.service.services._running if getattr(r, "alive", None) is True
            ]
    assert worker_running, "the job worker ran"
    released.set()
    assert "WebhookDispatcher did not stop within 0 s" in caplog.text
    assert not service.service.services._running
    assert all(not getattr(r, "alive", False) for r in worker_running)
