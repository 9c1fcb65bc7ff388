"""The one owner of a call's life: states, admission of participants, limits, one end."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from config import load_settings
from pipeline.call import (
    Admission,
    CallEndedError,
    CallLimits,
    CallSession,
    CallState,
    CapacityError,
    IllegalCallTransition,
)
from pipeline.runtime import LiveRuntime
from pipeline.sink import CollectingSink
from protocol import ErrorFrame, EventFrame
from tests.live_helpers import live_engine


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[LiveRuntime]:
    made = await LiveRuntime.create(
        load_settings(data_dir=tmp_path), CollectingSink(), engine=live_engine()
    )
    made.admission = Admission(max_streams=1, max_duration_s=60, idle_timeout_s=60)
    yield made
    await made.aclose()


def _events(runtime: LiveRuntime) -> list[tuple[str, str | None, str | None]]:
    assert isinstance(runtime.sink, CollectingSink)
    return [
        (f.event, f.participant, f.reason) for f in runtime.sink.frames if isinstance(f, EventFrame)
    ]


async def test_participants_hold_a_stream_slot_until_they_leave(runtime: LiveRuntime) -> None:
    assert runtime.admission is not None
    call = CallSession(runtime, "room", CallLimits(idle_timeout_s=60))
    await call.start()
    ann = await call.admit("ann")
    with pytest.raises(CapacityError):
        await call.admit("bob")
    assert isinstance(runtime.sink, CollectingSink)
    (refused,) = [f for f in runtime.sink.frames if isinstance(f, ErrorFrame)]
    assert (refused.code, refused.participant) == ("CAPACITY", "bob")
    again = await call.admit("ann")  # the same participant again replaces the old stream
    assert again is not ann and runtime.admission.active() == 1
    await call.remove_participant("ann")
    await call.admit("bob")
    record = await call.end()
    assert runtime.admission.active() == 0
    assert await call.end("later") is record and record.end_reason == "ended"
    assert call.state is CallState.ENDED
    with pytest.raises(CallEndedError):
        await call.admit("cid")
    with pytest.raises(IllegalCallTransition):
        call._move(CallState.OPEN)
    assert _events(runtime) == [
        ("call.started", None, None),
        ("participant.joined", "ann", None),
        ("participant.left", "ann", "replaced"),
        ("participant.joined", "ann", None),
        ("participant.left", "ann", "left"),
        ("participant.joined", "bob", None),
        ("participant.left", "bob", "ended"),
        ("call.ended", None, "ended"),
    ]


async def test_a_watched_call_ends_itself_when_idle_and_tells_its_transport(
    runtime: LiveRuntime,
) -> None:
    call = CallSession(runtime, "quiet", CallLimits(idle_timeout_s=0.6))
    told: list[str] = []

    async def ended(_: CallSession, reason: str) -> None:
        told.append(reason)

    call.on_ended.append(ended)
    await call.start(watch=True)
    stream = await call.admit("ann")
    for _ in range(6):  # audio keeps it open past the idle timeout
        stream.push(np.zeros(1600, np.int16))
        call.heard()
        await asyncio.sleep(0.2)
    assert call.state is CallState.OPEN
    async with asyncio.timeout(5):
        while call.state is not CallState.ENDED:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert told == ["idle"]
    assert call.expired() == "idle"


async def test_the_wall_clock_limit_wins_over_activity(runtime: LiveRuntime) -> None:
    call = CallSession(runtime, "long", CallLimits(idle_timeout_s=60, max_duration_s=0.4))
    await call.start(watch=True)
    await call.admit("ann")
    async with asyncio.timeout(5):
        while call.state is not CallState.ENDED:  # noqa: ASYNC110
            call.heard()
            await asyncio.sleep(0.05)
    assert _events(runtime)[-1] == ("call.ended", None, "max_duration")
