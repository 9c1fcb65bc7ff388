"""Admission by measured headroom: event-loop lag, recognition backlog, kernel UDP drops."""

import asyncio
import time
from pathlib import Path

import httpx

from pipeline.call import Admission, StreamKind
from pipeline.call.headroom import Headroom, HeadroomLimits
from pipeline.loop_lag import LoopLag
from tests.listen_helpers import listen_server, run_session

START = {"type": "start", "sample_rate": 16000, "channels": 1, "encoding": "pcm_s16le"}


async def hold_the_loop(lag: LoopLag, seconds: float, block_s: float = 0.3) -> None:
    """Block the event loop again and again, as GIL-holding work beside it would."""
    runner = asyncio.create_task(lag.run())
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(0.06)
            time.sleep(block_s)  # noqa: ASYNC251 - the point: a blocked loop
    finally:
        runner.cancel()


async def test_a_late_event_loop_refuses_new_streams_until_it_recovers() -> None:
    lag = LoopLag(interval_s=0.05)
    headroom = Headroom(HeadroomLimits(max_loop_lag_s=0.1, window_s=1.0), loop_lag=lag)
    admission = Admission(0, 60, 5, headroom=headroom)
    await hold_the_loop(lag, 1.5)
    assert admission.try_acquire(StreamKind.WEBSOCKET) is None
    error = admission.capacity_error()
    assert error.status == 503 and error.headers == {"Retry-After": "5"}
    assert "the event loop runs" in error.message and "limit 100 ms" in error.message
    runner = asyncio.create_task(lag.run())
    await asyncio.sleep(1.3)  # a calm window
    runner.cancel()
    assert headroom.shortage() is None
    assert admission.try_acquire(StreamKind.WEBSOCKET) is not None


def test_recognition_backlog_refuses_and_the_count_limit_comes_first() -> None:
    behind = [12.5]
    headroom = Headroom(HeadroomLimits(max_backlog_s=10.0), backlog_s=lambda: behind[0])
    admission = Admission(1, 60, 5, headroom=headroom)
    assert admission.try_acquire(StreamKind.WEBRTC) is None
    assert "recognition is 12.5 s behind the audio (limit 10.0 s)" in str(
        admission.capacity_error().message
    )
    behind[0] = 1.0
    assert admission.try_acquire(StreamKind.WEBRTC) is not None
    assert admission.try_acquire(StreamKind.WEBRTC) is None
    assert admission.capacity_error().message.startswith("all 1 live streams are in use")


def test_udp_drops_in_the_window_refuse_then_age_out() -> None:
    now, total = [100.0], [7]
    headroom = Headroom(
        HeadroomLimits(window_s=10.0),
        udp_drops=lambda: total[0],
        clock=lambda: now[0],
    )
    assert headroom.shortage() is None  # the first look is the baseline
    now[0], total[0] = 103.0, 52
    assert headroom.shortage() == "the kernel dropped 45 datagrams in the last 10 s"
    now[0] = 115.0  # no new drops since 103, which is now outside the window
    assert headroom.shortage() is None
    now[0] = 200.0
    assert headroom.shortage() is None
    off = Headroom(HeadroomLimits(refuse_on_udp_drops=False), udp_drops=lambda: 10**6)
    assert off.shortage() is None


async def test_the_service_refuses_streams_while_its_loop_is_held(
    nats_url: str, tmp_path: Path
) -> None:
    limits = {"max_loop_lag_ms": 100, "headroom_window_s": 1.0}
    async with listen_server(nats_url, tmp_path, limits=limits) as server:
        await hold_the_loop(LoopLag(), 1.5)  # the service's own lag task sees it too
        refused = await run_session(server.ws_url, START)
        assert refused.error["code"] == "CAPACITY", refused.messages
        assert "the event loop runs" in refused.error["message"]
        async with httpx.AsyncClient(base_url=server.http_url) as client:
            metrics = (await client.get("/metrics")).text
        assert 'roomscribe_live_streams_refused_total{kind="websocket"} 1.0' in metrics
        await asyncio.sleep(1.5)
        admitted = await run_session(server.ws_url, START, end={"type": "end"})
        assert admitted.messages[0]["type"] == "ready", admitted.messages
