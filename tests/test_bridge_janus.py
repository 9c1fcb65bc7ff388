"""A real Janus VideoRoom: aiortc publishers speak, the bot subscribes and captions them by name."""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from sfu_bridge.janus import JanusClient
from tests.bridge_peers import (
    SpeechTrack,
    assert_captions,
    bridge_settings,
    events,
    finals,
    host_address,
    running_bridge,
    utterance,
    wait_until,
)
from tests.conftest import librivox_files, librivox_reference
from tests.janus_server import JanusPublisher, JanusServer, start_janus, stop_janus

pytestmark = [pytest.mark.janus, pytest.mark.timeout(120)]

SHORT = "sense_and_sensibility_01_austen_64kb-0930"  # 3.3 s
LONGER = "sense_and_sensibility_01_austen_64kb-0890"  # 5.3 s


@pytest.fixture
def janus(tmp_path: Path) -> Iterator[JanusServer]:
    server = start_janus(tmp_path / "janus", host_address())
    yield server
    stop_janus(server)


async def room_displays(server: JanusServer) -> set[str]:
    client = JanusClient(server.url)
    await client.create()
    try:
        handle = await client.attach()
        data = await client.request(handle, {"request": "listparticipants", "room": server.room})
        return {p.get("display") for p in data["participants"]}
    finally:
        await client.aclose()


async def test_bot_captions_janus_publishers_by_display_name(
    tmp_path: Path, janus: JanusServer
) -> None:
    librivox_files()
    refs = librivox_reference()
    settings = bridge_settings(tmp_path, janus_urls=[janus.url, "http://127.0.0.1:9/janus"])
    async with running_bridge(settings) as (bridge, client, sink):
        ann = JanusPublisher(janus, "Ann", SpeechTrack())
        ben = JanusPublisher(janus, "Ben", SpeechTrack())
        await asyncio.gather(ann.join(), ben.join())

        bad = await client.post(
            "/v1/janus/join", json={"url": "http://127.0.0.1:9/janus", "room": janus.room}
        )
        assert bad.status_code == 502 and bad.json()["error"]["code"] == "PROTOCOL"
        joined = await client.post("/v1/janus/join", json={"url": janus.url, "room": janus.room})
        assert joined.status_code == 200, joined.text
        session, room = joined.json()["session_id"], joined.json()["room"]

        def speaking() -> set[str]:
            call = bridge.rooms.get(room)
            return {s.name or "" for s in call.participants.values()} if call else set()

        await wait_until(lambda: speaking() == {"Ann", "Ben"}, 20, "the bot to hear Ann and Ben")
        ann.track.say(utterance(SHORT))
        ben.track.say(utterance(LONGER))
        cat = JanusPublisher(janus, "Cat", SpeechTrack())
        await cat.join()
        await wait_until(
            lambda: "Cat" in speaking(), 20, "the bot to hear Cat, who joined after it"
        )
        cat.track.say(utterance(SHORT))
        await ben.track.spoken.wait()
        await wait_until(lambda: bool(finals(sink, str(ben.feed))), 20, "Ben's final")
        await ben.leave()
        await wait_until(
            lambda: "Ben" not in speaking(), 20, "Ben's stream to close when he leaves"
        )
        await asyncio.gather(ann.track.spoken.wait(), cat.track.spoken.wait())
        await wait_until(lambda: bool(finals(sink, str(cat.feed))), 20, "Cat's final")

        assert "roomscribe" in await room_displays(janus)
        assert (await client.delete(f"/v1/janus/{session}")).status_code == 204
        assert (await client.delete(f"/v1/janus/{session}")).status_code == 404
        assert "roomscribe" not in await room_displays(janus)
        for publisher in (ann, cat):
            await publisher.leave()

        spoken = {ann: SHORT, ben: LONGER, cat: SHORT}
        for publisher in spoken:
            assert {f.name for f in finals(sink, str(publisher.feed))} == {publisher.display}
        assert_captions(
            {p.display: refs[fileid] for p, fileid in spoken.items()},
            {p.display: " ".join(f.text for f in finals(sink, str(p.feed))) for p in spoken},
        )
        left = {e.name: e.reason for e in events(sink, "participant.left")}
        assert left["Ben"] == "left"
        [ended] = events(sink, "call.ended")
        assert ended.reason == "left" and ended.room == room
        assert not bridge.peers


async def test_join_janus_reports_a_missing_room(tmp_path: Path, janus: JanusServer) -> None:
    settings = bridge_settings(tmp_path, janus_urls=[janus.url])
    async with running_bridge(settings) as (_, client, _sink):
        missing = await client.post("/v1/janus/join", json={"url": janus.url, "room": 999})
        assert missing.status_code == 502
        assert missing.json()["error"]["message"] == "Janus: refused join (error 426)"
        assert (
            await client.post("/v1/janus/join", json={"url": "ftp://x", "room": 1})
        ).status_code == 400
