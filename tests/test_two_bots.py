"""Two ``roomscribe serve`` processes on one nats-server share room invites: a room lives on
one bot, and when that bot dies its room is reported lost and the next invite lands on the
other bot."""

import asyncio
import json
import os
import signal
from pathlib import Path

import httpx
import nats
import pytest
from aiortc import RTCPeerConnection

from pipeline.jobs import bucket_base
from protocol import Subjects, parse_frame
from tests.bridge_peers import client_peer, host_address, offer_for
from tests.conftest import free_port
from tests.service_helpers import roomscribe_process, stop_process, wait_http

pytestmark = pytest.mark.timeout(300)

PREFIX = "rs-bots"
TTL_S = 3.0


def bot_env(nats_url: str, port: int) -> dict[str, str]:
    return {
        "NATS_URL": nats_url,
        "ROOMSCRIBE_NATS__SUBJECT_PREFIX": PREFIX,
        "ROOMSCRIBE_API__PORT": str(port),
        "ROOMSCRIBE_BRIDGE__HOST_ADDRESSES": json.dumps([host_address()]),
        "ROOMSCRIBE_BRIDGE__ROOM_CLAIM_TTL_S": str(TTL_S),
        "ROOMSCRIBE_POSTCALL__RUN_WORKER": "false",
    }


async def peers_of(url: str) -> int:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{url}/metrics")).text
    line = next(x for x in text.splitlines() if x.startswith("roomscribe_bridge_peers "))
    return int(float(line.split()[1]))


async def invite(nc: nats.NATS, room: str, pcs: list[RTCPeerConnection]) -> dict[str, object]:
    pc = client_peer()
    pcs.append(pc)
    pc.addTransceiver("audio", direction="sendonly")
    body = {"room": room, "sdp": await offer_for(pc), "tracks": {"0": {"participant": "p"}}}
    reply = await nc.request(Subjects(PREFIX).invite, json.dumps(body).encode(), timeout=30)
    answer: dict[str, object] = json.loads(reply.data)
    return answer


async def test_a_room_stays_on_one_bot_and_moves_when_its_bot_dies(
    nats_url: str, tmp_path: Path
) -> None:
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    bots = [
        roomscribe_process(
            ["serve", "--data-dir", str(tmp_path / f"bot{i}")],
            bot_env(nats_url, port),
            tmp_path / f"bot{i}.log",
        )
        for i, port in enumerate(ports)
    ]
    pcs: list[RTCPeerConnection] = []
    nc = await nats.connect(nats_url)
    lost: list[str] = []
    reported = asyncio.Event()

    async def on_event(msg: nats.aio.msg.Msg) -> None:
        frame = parse_frame(msg.data)
        if frame.type == "error":
            lost.append(f"{frame.code} {frame.room}")
            reported.set()

    try:
        await asyncio.gather(*(wait_http(url, within_s=120) for url in urls))
        async with httpx.AsyncClient() as client:
            ids = [(await client.get(f"{url}/health")).json()["bot"] for url in urls]
        assert ids[0] and ids[1] and ids[0] != ids[1]
        await nc.subscribe(Subjects(PREFIX).events("standup"), cb=on_event)

        # the queue group spreads invites over both bots; the room's stay on one
        for _ in range(6):
            answer = await invite(nc, "standup", pcs)
            assert answer["ok"] is True, answer
        for _ in range(4):
            assert (await invite(nc, f"other-{len(pcs)}", pcs))["ok"] is True
        counts = [await peers_of(url) for url in urls]
        assert sum(counts) == 10, counts
        kv = await nc.jetstream().key_value(f"{bucket_base(PREFIX)}_rooms")
        holder = json.loads((await kv.get("standup")).value)["bot"]
        holding = ids.index(holder)
        other = 1 - holding
        assert counts[holding] >= 6, counts

        os.kill(bots[holding].pid, signal.SIGKILL)  # no goodbye: its claims just stop
        bots[holding].wait(10)
        await asyncio.wait_for(reported.wait(), TTL_S * 4)
        await asyncio.sleep(TTL_S)  # later sweeps do not report it again
        assert lost == ["BOT_LOST standup"], lost

        answer = await invite(nc, "standup", pcs)
        assert answer["ok"] is True, answer
        assert json.loads((await kv.get("standup")).value)["bot"] == ids[other]
        assert await peers_of(urls[other]) == counts[other] + 1
    finally:
        for pc in pcs:
            await pc.close()
        await nc.close()
        for bot in bots:
            stop_process(bot)
