"""Room sessions: one peer connection with many participants' tracks, over HTTP and NATS."""

import asyncio
import json
from pathlib import Path

import nats
import pytest
from nats.errors import NoRespondersError

from pipeline.sink import CollectingSink
from protocol import Subjects
from sfu_bridge.nats_service import QUEUE_GROUP, BridgeNatsService
from tests.bridge_peers import (
    SpeechTrack,
    answer,
    assert_captions,
    bridge_settings,
    client_peer,
    events,
    finals,
    offer_for,
    running_bridge,
    utterance,
    wait_until,
    wer,
)
from tests.conftest import librivox_files, librivox_reference

pytestmark = pytest.mark.timeout(120)

SHORT = "sense_and_sensibility_01_austen_64kb-0930"  # 3.3 s
LONGER = "sense_and_sensibility_01_austen_64kb-0890"  # 5.3 s


def stream_id_of(sdp: str, mid: str) -> str:
    section = sdp.split(f"a=mid:{mid}\r\n")[1].split("m=")[0]
    return (
        next(line for line in section.splitlines() if line.startswith("a=msid:"))
        .split(":")[1]
        .split()[0]
    )


def text_of(sink: CollectingSink, participant: str) -> str:
    return " ".join(f.text for f in finals(sink, participant))


async def test_room_session_follows_joins_leaves_and_switches(tmp_path: Path) -> None:
    librivox_files()
    refs = librivox_reference()
    async with running_bridge(bridge_settings(tmp_path)) as (bridge, client, sink):
        pc = client_peer()
        first = SpeechTrack(utterance(SHORT))
        second = SpeechTrack(utterance(LONGER))
        pc.addTransceiver(first, direction="sendonly")
        bob_side = pc.addTransceiver(second, direction="sendonly")
        offer = await offer_for(pc)
        tracks = {"0": {"participant": "alice", "name": "Alice"}, "1": {"participant": "bob"}}

        ghost = await client.post(
            "/v1/sessions",
            json={"room": "standup", "sdp": offer, "tracks": {**tracks, "7": {"participant": "x"}}},
        )
        assert ghost.status_code == 422 and ghost.json()["error"]["code"] == "UNKNOWN_MID", (
            ghost.text
        )
        created = await client.post(
            "/v1/sessions", json={"room": "standup", "sdp": offer, "tracks": tracks}
        )
        assert created.status_code == 200, created.text
        session = created.json()["session_id"]
        await answer(pc, created.json()["sdp"])
        await asyncio.gather(first.spoken.wait(), second.spoken.wait())
        await wait_until(
            lambda: bool(finals(sink, "alice") and finals(sink, "bob")),
            20,
            "alice's and bob's finals",
        )

        # carol joins on a new mid (no map entry: her msid stream id names her), bob leaves
        third = SpeechTrack()
        pc.addTransceiver(third, direction="sendonly")
        bob_side.direction = "inactive"
        reoffer = await offer_for(pc)
        carol = stream_id_of(reoffer, "2")
        renegotiated = await client.post(f"/v1/sessions/{session}/offer", json={"sdp": reoffer})
        assert renegotiated.status_code == 200, renegotiated.text
        await answer(pc, renegotiated.json()["sdp"])
        assert "bob" not in bridge.rooms["standup"].participants
        # the SFU now sends dan behind mid 0, and tells carol's name
        switch = {
            "0": {"participant": "dan", "name": "Dan"},
            "2": {"participant": carol, "name": "Carol"},
        }
        assert (
            await client.put(f"/v1/sessions/{session}/tracks", json={"tracks": switch})
        ).status_code == 204

        bad_mid = await client.put(
            f"/v1/sessions/{session}/tracks", json={"tracks": {"9": {"participant": "y"}}}
        )
        assert bad_mid.status_code == 422 and bad_mid.json()["error"]["code"] == "UNKNOWN_MID"
        missing = await client.post("/v1/sessions/nope/offer", json={"sdp": reoffer})
        assert missing.json()["error"]["code"] == "NOT_FOUND"
        assert (await client.delete("/v1/sessions/nope")).status_code == 404
        not_json = await client.post(
            "/v1/sessions", content=b"{", headers={"content-type": "application/json"}
        )
        assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "INVALID_REQUEST"
        no_sdp = await client.post("/v1/sessions", json={"room": "standup", "sdp": "nonsense"})
        assert no_sdp.status_code == 400 and no_sdp.json()["error"]["code"] == "INVALID_REQUEST"

        first.say(utterance(LONGER))
        third.say(utterance(SHORT))
        await asyncio.gather(first.spoken.wait(), third.spoken.wait())
        await wait_until(
            lambda: bool(finals(sink, "dan") and finals(sink, carol)),
            20,
            "dan's and carol's finals",
        )
        assert (await client.delete(f"/v1/sessions/{session}")).status_code == 204
        await pc.close()

        spoken = {"alice": SHORT, "bob": LONGER, "dan": LONGER, carol: SHORT}
        assert_captions(
            {who: refs[fileid] for who, fileid in spoken.items()},
            {who: text_of(sink, who) for who in spoken},
        )
        assert {f.name for f in finals(sink, carol)} == {"Carol"}
        assert {f.name for f in finals(sink, "dan")} == {"Dan"}
        left = {e.participant: e.reason for e in events(sink, "participant.left")}
        assert left == {"bob": "left", "alice": "replaced", "dan": "ended", carol: "ended"}
        assert len(events(sink, "call.started")) == 1
        [ended] = events(sink, "call.ended")
        assert ended.reason == "ended"
        assert not bridge.peers


async def test_room_session_over_nats_request_reply(tmp_path: Path, nats_url: str) -> None:
    librivox_files()
    subjects = Subjects()
    nc = await nats.connect(nats_url)
    async with running_bridge(bridge_settings(tmp_path)) as (bridge, _, sink):
        service = BridgeNatsService(bridge, await nats.connect(nats_url))
        await service.start()
        pc = client_peer()
        track = SpeechTrack(utterance(SHORT))
        pc.addTransceiver(track, direction="sendonly")
        offer = await offer_for(pc)

        async def request(subject: str, body: object) -> dict[str, object]:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            return json.loads((await nc.request(subject, data, timeout=10)).data)

        broken = await request(subjects.invite, b"not json")
        assert broken["ok"] is False and broken["error"]["code"] == "INVALID_REQUEST"  # type: ignore[index]
        ghost = await request(
            subjects.invite, {"room": "r", "sdp": offer, "tracks": {"5": {"participant": "x"}}}
        )
        assert ghost["error"]["code"] == "UNKNOWN_MID"  # type: ignore[index]
        invited = await request(
            subjects.invite, {"room": "r", "sdp": offer, "tracks": {"0": {"participant": "erin"}}}
        )
        assert invited["ok"] is True, invited
        session = str(invited["session_id"])
        await answer(pc, str(invited["sdp"]))

        bad = await request(
            subjects.session(session, "tracks"), {"tracks": {"3": {"participant": "z"}}}
        )
        assert bad["error"]["code"] == "UNKNOWN_MID"  # type: ignore[index]
        renamed = await request(
            subjects.session(session, "tracks"),
            {"tracks": {"0": {"participant": "erin", "name": "Erin"}}},
        )
        assert renamed == {"ok": True}
        await track.spoken.wait()
        await wait_until(lambda: bool(finals(sink, "erin")), 20, "erin's final")
        assert wer(librivox_reference()[SHORT], text_of(sink, "erin")) <= 0.08
        assert {f.name for f in finals(sink, "erin")} == {"Erin"}

        assert await request(subjects.session(session, "delete"), {}) == {"ok": True}
        with pytest.raises(NoRespondersError):
            await nc.request(subjects.session(session, "delete"), b"{}", timeout=2)
        assert [e.reason for e in events(sink, "call.ended")] == ["ended"]
        await service.aclose()
        await service.nc.close()
        await pc.close()
    await nc.close()
    assert QUEUE_GROUP == "roomscribe-bridge"
