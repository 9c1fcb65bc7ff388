"""RoomPublisher: a real aiortc client publishing participants into a bridge served over HTTP."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from sfu_bridge import bridge_router
from sfu_bridge.errors import BridgeError
from sfu_bridge.room_client import RoomPublisher, ScriptedParticipant, Speech
from tests.bridge_peers import (
    bridge_settings,
    finals,
    running_bridge,
    utterance,
    wait_until,
    wer,
)
from tests.conftest import librivox_files, librivox_reference

SHORT = "sense_and_sensibility_01_austen_64kb-0930"  # 3.3 s
TOKEN = "s3cret"


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[str]:
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done()
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


@pytest.mark.timeout(90)
async def test_publisher_errors_are_precise_and_a_good_publisher_is_captioned(
    tmp_path: Path,
) -> None:
    librivox_files()
    settings = bridge_settings(tmp_path, bearer_tokens=[TOKEN])
    async with running_bridge(settings) as (bridge, _, sink):
        app = FastAPI()
        app.include_router(bridge_router(bridge))
        async with served(app) as url:
            alice = ScriptedParticipant("alice", "Alice", "en", [Speech(0.3, utterance(SHORT))])

            refused = RoomPublisher(url, "standup", [alice], token="wrong")
            with pytest.raises(BridgeError) as caught:
                await refused.start()
            assert (caught.value.status, caught.value.code) == (401, "UNAUTHORIZED")
            assert "bearer token" in caught.value.message
            await refused.end()

            publisher = RoomPublisher(url, "standup", [alice], token=TOKEN)
            session = await publisher.start()
            assert session in bridge.peers
            await publisher.wait_played()
            await wait_until(lambda: bool(finals(sink, "alice")), 20, "alice's final")
            heard = " ".join(f.text for f in finals(sink, "alice"))
            assert wer(librivox_reference()[SHORT], heard) <= 0.3, heard
            assert {f.name for f in finals(sink, "alice")} == {"Alice"}
            await publisher.end()
            assert session not in bridge.peers
