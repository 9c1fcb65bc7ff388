"""WHIP: real aiortc publishers send Opus speech to the bridge; captions come out per participant."""

import asyncio
import json
from pathlib import Path

import av
import nats
import numpy as np
import pytest
from aiortc import VideoStreamTrack
from nats.aio.msg import Msg

from pipeline.publisher import NatsPublisher
from protocol import Subjects, parse_frame
from tests.bridge_peers import (
    SpeechTrack,
    answer,
    assert_captions,
    bridge_settings,
    client_peer,
    events,
    finals,
    host_address,
    offer_for,
    running_bridge,
    utterance,
    wait_until,
    wer,
)
from tests.conftest import librivox_files, librivox_reference

pytestmark = pytest.mark.timeout(120)

SDP = {"content-type": "application/sdp"}
SHORT = "sense_and_sensibility_01_austen_64kb-0930"  # 3.3 s
LONGER = "sense_and_sensibility_01_austen_64kb-0890"  # 5.3 s


class TinyVideo(VideoStreamTrack):
    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame.from_ndarray(np.zeros((48, 32), np.uint8), format="yuv420p")
        frame.pts, frame.time_base = pts, time_base
        return frame


def candidate_hosts(sdp: str) -> set[str]:
    return {line.split()[4] for line in sdp.splitlines() if line.startswith("a=candidate:")}


async def test_two_publishers_get_their_own_captions_on_nats(tmp_path: Path, nats_url: str) -> None:
    librivox_files()
    refs = librivox_reference()
    subjects = Subjects()
    received: list[bytes] = []
    nc = await nats.connect(nats_url)

    async def collect(msg: Msg) -> None:
        received.append(msg.data)

    await nc.subscribe(subjects.room_captions("room a"), cb=collect)
    publisher = NatsPublisher(nats_url, subjects)
    await publisher.start()
    settings = bridge_settings(tmp_path)
    async with running_bridge(settings, publisher) as (bridge, client, sink):
        speakers = {"alice": (SHORT, "Alice"), "bob": (LONGER, "Bob")}
        peers, locations = [], {}
        for who, (fileid, name) in speakers.items():
            pc = client_peer()
            track = SpeechTrack(utterance(fileid))
            pc.addTrack(track)
            if who == "alice":
                pc.addTrack(TinyVideo())  # a camera the bot must read and discard
            response = await client.post(
                f"/whip/room a/{who}",
                params={"name": name},
                content=await offer_for(pc),
                headers=SDP,
            )
            assert response.status_code == 201, response.text
            assert response.headers["content-type"] == "application/sdp"
            assert response.headers["etag"]
            assert candidate_hosts(response.text) == {host_address()}
            await answer(pc, response.text)
            peers.append((pc, track))
            locations[who] = response.headers["location"]
        assert all(loc.startswith("/whip/sessions/") for loc in locations.values())
        await asyncio.gather(*(track.spoken.wait() for _, track in peers))
        await wait_until(
            lambda: all(finals(sink, who) for who in speakers), 20, "a final from each"
        )
        alice_pc = bridge.peers[locations["alice"].rsplit("/", 1)[1]].pc
        [video] = [t for t in alice_pc.getTransceivers() if t.kind == "video"]
        stats = await video.receiver.getStats()
        assert sum(s.packetsReceived for s in stats.values() if s.type == "inbound-rtp") > 20
        unread = video.receiver.track._queue.qsize()  # type: ignore[attr-defined]
        assert unread < 5, f"{unread} video frames pile up unread"
        for who, location in locations.items():
            assert (await client.delete(location)).status_code == 200, who
        for pc, _ in peers:
            await pc.close()
        for who, (_, name) in speakers.items():
            assert all(f.name == name and f.room == "room a" for f in finals(sink, who))
        assert_captions(
            {who: refs[fileid] for who, (fileid, _) in speakers.items()},
            {who: " ".join(f.text for f in finals(sink, who)) for who in speakers},
        )
        joined = {e.participant: e.name for e in events(sink, "participant.joined")}
        assert joined == {"alice": "Alice", "bob": "Bob"}
        [ended] = events(sink, "call.ended")
        record = json.loads((settings.data_dir / "calls" / ended.call_id / "call.json").read_text())
        assert sorted(p["participant"] for p in record["participants"]) == ["alice", "bob"]
        assert record["end_reason"] == "left"
        assert not bridge.peers and not bridge.rooms
    await publisher.close()
    await nc.flush()
    await nc.close()
    on_nats = [parse_frame(data) for data in received]
    nats_finals = {(f.participant, f.text) for f in on_nats if f.type == "final" and f.text.strip()}
    assert nats_finals == {(f.participant, f.text) for f in finals(sink)}


async def _audio_offer(direction: str = "sendonly") -> str:
    pc = client_peer()
    pc.addTransceiver("audio", direction=direction)
    try:
        return await offer_for(pc)
    finally:
        await pc.close()


async def test_bad_requests_get_precise_errors_and_others_go_on(tmp_path: Path) -> None:
    librivox_files()
    settings = bridge_settings(tmp_path, bearer_tokens=["s3cret"])
    auth = {"authorization": "Bearer s3cret"}
    async with running_bridge(settings) as (_, client, sink):
        pc = client_peer()
        track = SpeechTrack(utterance(SHORT))
        pc.addTrack(track)
        offer = await offer_for(pc)

        missing = await client.post("/whip/r/carol", content=offer, headers=SDP)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert missing.json()["error"]["code"] == "UNAUTHORIZED"
        wrong = await client.post(
            "/whip/r/carol", content=offer, headers={**SDP, "authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "UNAUTHORIZED"

        good = await client.post("/whip/r/carol", content=offer, headers={**SDP, **auth})
        assert good.status_code == 201, good.text
        await answer(pc, good.text)
        location, etag = good.headers["location"], good.headers["etag"]

        not_sdp = await client.post(
            "/whip/r/dave", content=offer, headers={"content-type": "text/plain", **auth}
        )
        assert (
            not_sdp.status_code == 415 and not_sdp.json()["error"]["code"] == "UNSUPPORTED_FORMAT"
        )
        for garbage in ("hello", "v=0\r\nm=audio notaport UDP/TLS/RTP/SAVPF 111\r\n"):
            bad = await client.post("/whip/r/dave", content=garbage, headers={**SDP, **auth})
            assert bad.status_code == 400 and bad.json()["error"]["code"] == "INVALID_REQUEST", (
                bad.text
            )
            assert bad.json()["error"]["message"]
        no_audio = await client.post(
            "/whip/r/dave", content=await _audio_offer("recvonly"), headers={**SDP, **auth}
        )
        assert no_audio.status_code == 400 and no_audio.json()["error"]["code"] == "NO_AUDIO"

        unknown = await client.delete("/whip/sessions/nope", headers=auth)
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "NOT_FOUND"
        frag = {"content-type": "application/trickle-ice-sdpfrag", **auth}
        candidate = "a=mid:0\r\na=candidate:1 1 udp 2130706431 198.51.100.7 9 typ host\r\n"
        stale = await client.patch(
            location, content=candidate, headers={**frag, "if-match": '"old"'}
        )
        assert stale.status_code == 412 and stale.json()["error"]["code"] == "PRECONDITION_FAILED"
        trickled = await client.patch(
            location, content=candidate, headers={**frag, "if-match": etag}
        )
        assert trickled.status_code == 204
        restart = await client.patch(
            location, content="a=ice-ufrag:zzzz\r\na=ice-pwd:" + "p" * 22, headers=frag
        )
        assert restart.status_code == 422
        wrong_type = await client.patch(
            location, content=candidate, headers={**auth, "content-type": "text/plain"}
        )
        assert wrong_type.status_code == 415

        await track.spoken.wait()
        await wait_until(lambda: bool(finals(sink, "carol")), 20, "carol's final")
        text = " ".join(f.text for f in finals(sink, "carol"))
        assert wer(librivox_reference()[SHORT], text) <= 0.08, text
        assert (await client.delete(location, headers=auth)).status_code == 200
        assert (await client.delete(location, headers=auth)).status_code == 404
        await pc.close()
        assert {e.participant for e in events(sink, "participant.joined")} == {"carol"}


async def test_vanished_peer_is_flushed_and_idle_call_ends(tmp_path: Path) -> None:
    librivox_files()
    refs = librivox_reference()
    settings = bridge_settings(tmp_path, track_stall_s=1.5, idle_timeout_s=3.0)
    async with running_bridge(settings) as (bridge, client, sink):
        tracks = {"dave": SpeechTrack(utterance(SHORT), tail_s=0.2, then="hang")}
        tracks["erin"] = SpeechTrack(utterance(LONGER), tail_s=1.0, then="hang")
        peers = []
        for who, track in tracks.items():
            pc = client_peer()
            pc.addTrack(track)
            response = await client.post(f"/whip/r/{who}", content=await offer_for(pc), headers=SDP)
            assert response.status_code == 201
            await answer(pc, response.text)
            peers.append(pc)
        await wait_until(lambda: bool(events(sink, "call.ended")), 30, "the idle end of the call")
        left = {e.participant: e for e in events(sink, "participant.left")}
        assert left["dave"].reason == "stalled" and left["erin"].reason == "stalled"
        [ended] = events(sink, "call.ended")
        assert ended.reason == "idle"
        erin_finals = finals(sink, "erin")
        assert_captions(
            {"dave": refs[SHORT], "erin": refs[LONGER]},
            {who: " ".join(f.text for f in finals(sink, who)) for who in ("dave", "erin")},
        )
        order = sink.frames.index
        assert order(left["dave"]) < order(erin_finals[-1]), (
            "erin's call stopped when dave vanished"
        )
        await wait_until(
            lambda: not bridge.peers and not bridge.rooms, 10, "the bot to leave the idle room"
        )
        for pc in peers:
            await pc.close()
