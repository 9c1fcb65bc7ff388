import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from config.settings import load_settings
from pipeline.publisher import NatsPublisher, Outbox, OutboxEntry, subject_for
from pipeline.sink import AnyFrame
from protocol import (
    CaptionFrame,
    ErrorCode,
    ErrorFrame,
    EventFrame,
    EventType,
    Subjects,
    Word,
    parse_frame,
)
from protocol.subjects import InvalidIdError
from tests.conftest import NatsProcess

SUBJECTS = Subjects()


def caption(
    seq: int, final: bool = True, room: str = "standup", participant: str = "alice"
) -> CaptionFrame:
    text = f"utterance {seq}"
    return CaptionFrame(
        type="final" if final else "partial",
        room=room,
        participant=participant,
        segment_id=f"{participant}-{seq}",
        rev=1 if final else 0,
        seq=seq,
        start=float(seq),
        end=float(seq) + 0.5,
        text=text,
        words=[Word(word=text, start=float(seq), end=float(seq) + 0.5, confidence=1.0)]
        if final
        else [],
        model="test",
    )


async def eventually(predicate: Callable[[], bool], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def connect(url: str) -> Client:
    return await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)


async def settle(nc: Client) -> None:
    """Returns once the server has every command sent so far (subscriptions included).

    nats-py writes the PING of ``flush()`` ahead of commands still in its buffer, so one
    round trip can come back before a fresh SUB reached the server; the second cannot.
    """
    await nc.flush()
    await nc.flush()


@pytest.fixture
async def client(nats_url: str) -> AsyncIterator[Client]:
    nc = await connect(nats_url)
    yield nc
    await nc.close()


async def capture_stream(nc: Client, name: str = "CAPTURE") -> None:
    await nc.jetstream().add_stream(name=name, subjects=[f"{SUBJECTS.prefix}.v1.>"])


async def stream_frames(nc: Client, name: str = "CAPTURE") -> list[CaptionFrame]:
    js = nc.jetstream()
    info = await js.stream_info(name)
    frames = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        frame = parse_frame((await js.get_msg(name, seq)).data or b"")
        assert isinstance(frame, CaptionFrame)
        frames.append(frame)
    return frames


def process_state(server: NatsProcess) -> str:
    assert server.proc is not None
    stat = Path(f"/proc/{server.proc.pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


async def captured_until(nc: Client, count: int) -> list[CaptionFrame]:
    """The captured caption frames, first copy of each seq, once ``count`` are stored.

    A stream stores core publishes shortly after the server has confirmed them.
    """
    deadline = time.monotonic() + 15
    while len(frames := first_of_each_seq(await stream_frames(nc))) < count:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    return frames


async def stream_count(nc: Client, name: str = "CAPTURE") -> int:
    return (await nc.jetstream().stream_info(name)).state.messages


async def eventually_async(probe: Callable[[], Awaitable[int]], expected: int) -> None:
    deadline = time.monotonic() + 15
    while (got := await probe()) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"got {got}, expected {expected}")
        await asyncio.sleep(0.02)


def first_of_each_seq(frames: list[CaptionFrame]) -> list[CaptionFrame]:
    seen: set[int] = set()
    unique = []
    for frame in frames:
        if frame.seq not in seen:
            seen.add(frame.seq)
            unique.append(frame)
    return unique


def entry(seq: int, final: bool) -> OutboxEntry:
    frame = caption(seq, final)
    return OutboxEntry(subject_for(SUBJECTS, frame), frame, partial=not final)


def seqs(entries: list[OutboxEntry]) -> list[int]:
    return [e.frame.seq for e in entries if isinstance(e.frame, CaptionFrame)]


def test_outbox_drops_oldest_partial_then_oldest_final() -> None:
    box = Outbox(4)
    for seq, final in [(0, True), (1, False), (2, False), (3, True)]:
        assert box.put(entry(seq, final)) is None
    dropped = [
        box.put(entry(seq, final)) for seq, final in [(4, False), (5, True), (6, True), (7, True)]
    ]
    assert seqs([d for d in dropped if d is not None]) == [1, 2, 4, 0]
    assert (box.dropped_partials, box.dropped_finals, len(box)) == (3, 1, 4)
    assert seqs(box.take(10)) == [3, 5, 6, 7]
    assert len(box) == 0


def test_outbox_restore_keeps_order_and_bound() -> None:
    box = Outbox(3)
    for seq, final in [(0, False), (1, True), (2, False)]:
        box.put(entry(seq, final))
    batch = box.take(2)
    assert seqs(batch) == [0, 1]
    box.put(entry(3, True))
    box.put(entry(4, False))
    assert seqs(box.restore(batch)) == [0, 2]
    assert seqs(box.take(10)) == [1, 3, 4]


def test_outbox_tombstones_stay_bounded() -> None:
    box = Outbox(10)
    box.put(entry(0, True))
    for seq in range(1, 10_000):
        box.put(entry(seq, False))
    assert len(box) == 10
    assert len(box._entries) <= 2 * box.limit + 1
    assert seqs(box.take(100)) == [0, *range(9991, 10_000)]


def test_routing_of_every_frame_type() -> None:
    assert subject_for(SUBJECTS, caption(1)) == "roomscribe.v1.captions.standup.alice"
    joined = EventFrame(event=EventType.PARTICIPANT_JOINED, room="standup", call_id="c", at=0.0)
    assert subject_for(SUBJECTS, joined) == "roomscribe.v1.events.standup"
    speaker_error = ErrorFrame(
        code=ErrorCode.STREAM_OVERLOADED, message="m", room="standup", participant="bob"
    )
    assert subject_for(SUBJECTS, speaker_error) == "roomscribe.v1.captions.standup.bob"
    room_error = ErrorFrame(code=ErrorCode.INTERNAL, message="m", room="standup")
    assert subject_for(SUBJECTS, room_error) == "roomscribe.v1.events.standup"
    with pytest.raises(InvalidIdError, match="without a room"):
        subject_for(SUBJECTS, ErrorFrame(code=ErrorCode.INTERNAL, message="m"))


async def test_frames_arrive_on_encoded_subjects(nats_url: str, client: Client) -> None:
    sub = await client.subscribe(f"{SUBJECTS.prefix}.v1.>")
    await settle(client)
    room, participant = "standup.eu", "Zoë *"
    frames: list[AnyFrame] = [
        caption(0, room=room, participant=participant),
        EventFrame(event=EventType.CALL_STARTED, room=room, call_id="c1", at=1.0),
        ErrorFrame(code=ErrorCode.INTERNAL, message="no room"),
        caption(1, room=""),
        ErrorFrame(
            code=ErrorCode.STREAM_OVERLOADED, message="slow", room=room, participant=participant
        ),
    ]
    async with NatsPublisher(nats_url, SUBJECTS) as publisher:
        for frame in frames:
            publisher.emit(frame)
        msgs = [await sub.next_msg(timeout=10) for _ in range(3)]
        await eventually(lambda: publisher.stats.pending == 0)
        assert publisher.stats.published == 3
        assert publisher.stats.rejected == 2

    assert msgs[0].subject == "roomscribe.v1.captions.standup~2Eeu.Zo~C3~AB~20~2A"
    assert SUBJECTS.parse_captions(msgs[0].subject) == (room, participant)
    assert parse_frame(msgs[0].data) == frames[0]
    assert msgs[1].subject == "roomscribe.v1.events.standup~2Eeu"
    assert parse_frame(msgs[1].data) == frames[1]
    assert SUBJECTS.parse_captions(msgs[2].subject) == (room, participant)
    assert parse_frame(msgs[2].data) == frames[4]


async def test_room_wildcard_matches_only_its_room(nats_url: str, client: Client) -> None:
    received: dict[str, list[Msg]] = {}
    rooms = ["a", "a.b", "*", ">", "ab", "a b"]
    for room in ["a", "*", ">"]:
        received[room] = []
        await client.subscribe(SUBJECTS.room_captions(room), cb=_collect(received[room]))
    everything: list[Msg] = []
    await client.subscribe(f"{SUBJECTS.prefix}.v1.captions.>", cb=_collect(everything))
    await settle(client)

    async with NatsPublisher(nats_url, SUBJECTS) as publisher:
        seq = 0
        for room in rooms:
            for participant in ["p1", "p.2"]:
                publisher.emit(caption(seq, room=room, participant=participant))
                seq += 1
        await eventually(lambda: len(everything) == seq)
        await eventually(lambda: all(len(received[room]) >= 2 for room in received))
    await settle(client)

    for room in ["a", "*", ">"]:
        got = [SUBJECTS.parse_captions(m.subject) for m in received[room]]
        assert got == [(room, "p1"), (room, "p.2")]


def _collect(into: list[Msg]) -> Callable[[Msg], Awaitable[None]]:
    async def on_msg(msg: Msg) -> None:
        into.append(msg)

    return on_msg


async def test_finals_survive_a_killed_server(nats_process: NatsProcess, client: Client) -> None:
    await capture_stream(client)
    publisher = NatsPublisher(nats_process.url, SUBJECTS, reconnect_wait=0.2, flush_timeout=1.0)
    await publisher.start()
    await asyncio.wait_for(publisher.wait_connected(), 10)
    emitted = 0

    async def produce(count: int) -> None:
        nonlocal emitted
        for _ in range(count):
            publisher.emit(caption(emitted))
            emitted += 1
            await asyncio.sleep(0.002)

    await produce(100)
    # A frame the server took in just before SIGKILL can die with it (NATS core has no
    # acknowledgement of delivery), so the outage starts once the first frames are stored.
    await eventually(lambda: publisher.stats.published == 100)
    await eventually_async(lambda: stream_count(client), 100)
    # A frozen server still takes bytes into its socket buffer: what is written now is
    # confirmed by nobody and dies with the process.
    assert nats_process.proc is not None
    nats_process.proc.send_signal(signal.SIGSTOP)
    await eventually(lambda: process_state(nats_process) == "T")
    await produce(100)
    await asyncio.to_thread(nats_process.stop, kill=True)
    await eventually(lambda: not publisher.is_connected)
    await produce(100)
    assert publisher.stats.pending >= 200

    await asyncio.to_thread(nats_process.start)
    await produce(100)
    await eventually(lambda: publisher.stats.pending == 0 and publisher.stats.published >= emitted)
    assert publisher.stats.reconnects >= 1
    await publisher.close()

    await eventually(lambda: client.is_connected)
    frames = await captured_until(client, emitted)
    assert [f.seq for f in frames] == list(range(emitted))
    assert all(f.type == "final" for f in frames)


async def test_overflow_while_down_drops_partials_first(
    nats_process: NatsProcess, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    await capture_stream(client)
    await asyncio.to_thread(nats_process.stop)
    settings = load_settings(nats={"outbox_limit": 4, "reconnect_wait_s": 0.2})
    publisher = NatsPublisher.from_settings(nats_process.url, settings.nats)
    assert (publisher.reconnect_wait, publisher.subjects) == (0.2, SUBJECTS)
    await publisher.start()
    with caplog.at_level(logging.WARNING, logger="pipeline.publisher"):
        for seq, final in [
            (0, True),
            (1, False),
            (2, False),
            (3, True),
            (4, False),
            (5, True),
            (6, True),
            (7, True),
        ]:
            publisher.emit(caption(seq, final))
    stats = publisher.stats
    assert (stats.pending, stats.dropped_partials, stats.dropped_finals) == (4, 3, 1)
    assert sum("outbox full" in r.message for r in caplog.records) == 1

    await asyncio.to_thread(nats_process.start)
    await eventually(lambda: publisher.stats.published == 4)
    await publisher.close()
    await eventually(lambda: client.is_connected)
    frames = await captured_until(client, 4)
    assert [f.seq for f in frames] == [3, 5, 6, 7]


async def test_close_gives_up_after_drain_timeout(nats_process: NatsProcess) -> None:
    await asyncio.to_thread(nats_process.stop)
    publisher = NatsPublisher(nats_process.url, SUBJECTS, reconnect_wait=0.2, drain_timeout=0.3)
    await publisher.start()
    publisher.emit(caption(0))
    await asyncio.wait_for(publisher.close(), 10)
    assert publisher.stats.pending == 1
    publisher.emit(caption(1))
    assert publisher.stats.rejected == 1
