"""Every way into a call (WebSocket, WHIP, room session, Janus), through the production
composition (``running_service``): each call is handed over once, and its one post-call job
runs on a ``roomscribe worker`` whose data dir is empty, reading the recording from the
object store only."""

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import nats
import numpy as np
import pytest
from nats.aio.msg import Msg

from protocol import CaptionFrame, parse_frame
from sfu_bridge.room_client import RoomPublisher, ScriptedParticipant, Speech
from tests.api_helpers import make_settings, wait_done, wer
from tests.bridge_peers import SpeechTrack, answer, client_peer, host_address, offer_for, utterance
from tests.conftest import librivox_reference
from tests.janus_server import JanusPublisher, start_janus, stop_janus
from tests.listen_helpers import run_session
from tests.service_helpers import Served, jobs_of, roomscribe_process, served, stop_process
from tests.webhook_receiver import Receiver, webhook_receiver

pytestmark = pytest.mark.timeout(400)

SHORT = "sense_and_sensibility_01_austen_64kb-0930"  # 3.3 s
LONGER = "sense_and_sensibility_01_austen_64kb-0890"  # 5.3 s


class Captions:
    """Live finals on NATS, by room."""

    def __init__(self) -> None:
        self.finals: dict[str, list[CaptionFrame]] = {}

    async def collect(self, msg: Msg) -> None:
        frame = parse_frame(msg.data)
        if isinstance(frame, CaptionFrame) and frame.type == "final" and frame.text.strip():
            self.finals.setdefault(frame.room, []).append(frame)

    async def wait(self, room: str, within_s: float = 30.0) -> None:
        async with asyncio.timeout(within_s):
            while not self.finals.get(room):  # noqa: ASYNC110
                await asyncio.sleep(0.1)


async def listen_call(served: Served) -> str:
    audio = np.concatenate([utterance(LONGER), np.zeros(16_000, np.int16)]).astype("<i2")
    data = audio.tobytes()
    pieces = [data[at : at + 6400] for at in range(0, len(data), 6400)]
    start = {"type": "start", "language": "en", "room": "by-socket", "participant": "sam"}
    session = await run_session(served.ws_url, start, pieces, pace_s=0.02, end={"type": "end"})
    assert session.messages[-1]["type"] == "completed", session.messages
    job_id: str = session.messages[0]["job_id"]
    assert session.messages[-1]["job_id"] == job_id
    return job_id


async def whip_call(served: Served, client: httpx.AsyncClient, captions: Captions) -> None:
    pc = client_peer()
    track = SpeechTrack(utterance(LONGER))
    pc.addTrack(track)
    response = await client.post(
        "/whip/by-whip/wes",
        content=await offer_for(pc),
        headers={"content-type": "application/sdp"},
    )
    assert response.status_code == 201, response.text
    await answer(pc, response.text)
    await track.spoken.wait()
    await captions.wait("by-whip")
    assert (await client.delete(response.headers["location"])).status_code == 200
    await pc.close()


async def room_session_call(served: Served, captions: Captions) -> None:
    rita = ScriptedParticipant("rita", "Rita", "en", [Speech(0.3, utterance(LONGER))])
    publisher = RoomPublisher(served.http_url, "by-session", [rita])
    await publisher.start()
    await publisher.wait_played()
    await captions.wait("by-session")
    await publisher.end()


async def janus_call(
    client: httpx.AsyncClient, captions: Captions, tmp_path: Path
) -> tuple[str, str]:
    janus = start_janus(tmp_path / "janus", host_address())
    try:
        publisher = JanusPublisher(janus, "Jan", SpeechTrack())
        await publisher.join()
        joined = await client.post("/v1/janus/join", json={"url": janus.url, "room": janus.room})
        assert joined.status_code == 200, joined.text
        room = joined.json()["room"]
        await asyncio.sleep(2.0)  # the bot subscribes to Jan's feed
        publisher.track.say(utterance(LONGER))
        await publisher.track.spoken.wait()
        await captions.wait(room)
        session = joined.json()["session_id"]
        assert (await client.delete(f"/v1/janus/{session}")).status_code == 204
        await publisher.leave()
        return room, str(publisher.feed)
    finally:
        stop_janus(janus)


def events_by_job(receiver: Receiver) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for hit in receiver.received:
        event = json.loads(hit.body)
        job = event["data"].get("job_id") or event["data"]["id"]
        found.setdefault(job, []).append(event["type"])
    return found


async def test_each_ingress_hands_over_one_job_run_by_a_worker_elsewhere(
    nats_url: str, tmp_path: Path
) -> None:
    refs = librivox_reference()
    empty = tmp_path / "worker-data"
    empty.mkdir()
    with webhook_receiver() as receiver:
        settings = make_settings(
            nats_url,
            tmp_path / "serve-data",
            postcall={"run_worker": False, "webhook_url": receiver.url},
            # the Janus this test starts is not known in advance (private URLs are allowed)
            bridge={"host_addresses": [host_address()], "janus_any_url": True},
        )
        captions = Captions()
        nc = await nats.connect(nats_url)
        worker = None
        try:
            async with (
                served(settings) as service,
                httpx.AsyncClient(base_url=service.http_url, timeout=30) as client,
            ):
                subjects = service.service.runtime.subjects
                await nc.subscribe(f"{subjects.prefix}.v1.captions.>", cb=captions.collect)
                listen_job = await listen_call(service)
                await whip_call(service, client, captions)
                await room_session_call(service, captions)
                janus_room, jan = await janus_call(client, captions, tmp_path)

                calls = (await client.get("/v1/calls")).json()["data"]
                assert {c["room"] for c in calls} == {
                    "by-socket",
                    "by-whip",
                    "by-session",
                    janus_room,
                }
                assert all(c["state"] == "handed_over" and c["job_id"] for c in calls), calls
                assert {c["job_id"] for c in calls if c["room"] == "by-socket"} == {listen_job}
                queued = await jobs_of(client)
                assert sorted(j["id"] for j in queued) == sorted(c["job_id"] for c in calls)
                assert all(j["status"] == "queued" for j in queued)  # no worker here

                worker = roomscribe_process(
                    ["worker", "--data-dir", str(empty)],
                    {
                        "NATS_URL": nats_url,
                        "ROOMSCRIBE_NATS__SUBJECT_PREFIX": settings.nats.subject_prefix,
                        "ROOMSCRIBE_POSTCALL__MODEL": "whisper-tiny.en",
                        # its webhook sender delivers to the loopback receiver too
                        "ROOMSCRIBE_API__ALLOW_PRIVATE_URLS": "true",
                        "ROOMSCRIBE_POSTCALL__SUMMARIZE": "false",
                    },
                    tmp_path / "worker.log",
                )
                done: dict[str, dict[str, Any]] = {}
                for call in calls:
                    done[call["room"]] = await wait_done(client, call["job_id"], limit_s=240)
                await asyncio.to_thread(receiver.wait_for, 2 * len(calls), 60.0)
                await asyncio.sleep(1.0)  # room for a duplicate to show up
                assert len(await jobs_of(client)) == len(calls)
        finally:
            if worker is not None:
                stop_process(worker)
            await nc.close()

    assert not (empty / "calls").exists()
    speakers = {"by-socket": "sam", "by-whip": "wes", "by-session": "rita", janus_room: jan}
    for room, body in done.items():
        assert body["status"] == "completed", (room, body, (tmp_path / "worker.log").read_text())
        segments = body["transcript"]["segments"]
        assert {s["speaker"] for s in segments} == {speakers[room]}
        assert wer(refs[LONGER], " ".join(s["text"] for s in segments)) <= 0.15, (room, segments)
        live = {f.segment_id for f in captions.finals[room]}
        carried = {sid for s in segments for sid in s["live_segment_ids"]}
        assert carried and carried <= live
    for job, kinds in events_by_job(receiver).items():
        assert sorted(kinds) == ["call.ended", "transcript.revised"], (job, kinds)
    assert len(events_by_job(receiver)) == 4
