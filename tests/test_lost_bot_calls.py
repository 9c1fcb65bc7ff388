"""A bot killed in the middle of a call: another bot on the same NATS finishes the call from
its checkpoints and runs its one post-call pass, with the words spoken before the kill."""

import asyncio
import json
import signal
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect

from pipeline.audio_io import decode_file
from tests.api_helpers import make_settings, wait_done, wer
from tests.conftest import free_port, librivox_files, librivox_reference
from tests.service_helpers import roomscribe_process, served, stop_process, wait_http

pytestmark = pytest.mark.timeout(300)

PREFIX = "rs-lost"
CHECKPOINT_S = 1.0
STALE_S = 3.0


async def test_a_call_whose_bot_is_killed_is_finished_by_another_bot(
    nats_url: str, tmp_path: Path
) -> None:
    clip = librivox_files()[3]
    pcm = decode_file(clip)
    port = free_port()
    lost_bot = roomscribe_process(
        ["serve", "--data-dir", str(tmp_path / "lost")],
        {
            "NATS_URL": nats_url,
            "ROOMSCRIBE_NATS__SUBJECT_PREFIX": PREFIX,
            "ROOMSCRIBE_API__PORT": str(port),
            "ROOMSCRIBE_POSTCALL__RUN_WORKER": "false",
            "ROOMSCRIBE_POSTCALL__CHECKPOINT_S": str(CHECKPOINT_S),
        },
        tmp_path / "lost.log",
    )
    settings = make_settings(
        nats_url,
        tmp_path / "survivor",
        nats={"subject_prefix": PREFIX},
        postcall={"checkpoint_s": CHECKPOINT_S, "checkpoint_stale_s": STALE_S, "run_worker": True},
    )
    try:
        await wait_http(f"http://127.0.0.1:{port}")
        async with served(settings) as survivor:
            ws = await connect(f"ws://127.0.0.1:{port}/v1/listen", max_size=None)
            await ws.send(json.dumps({"type": "start", "sample_rate": 16000, "room": "standup"}))
            ready = json.loads(await ws.recv())
            assert ready["type"] == "ready", ready
            for begin in range(0, pcm.size, 3200):
                await ws.send(pcm[begin : begin + 3200].tobytes())
            # a second of silence flushes the recording; two checkpoints copy all of it
            await ws.send(np.zeros(16_000, "<i2").tobytes())
            await asyncio.sleep(3 * CHECKPOINT_S)
            lost_bot.send_signal(signal.SIGKILL)
            lost_bot.wait(10)
            live_calls = survivor.service.services.live_calls
            assert live_calls is not None
            async with asyncio.timeout(60):
                while live_calls.taken_over == 0:  # noqa: ASYNC110 - a counter, no event
                    await asyncio.sleep(0.2)
            (call_dir,) = (tmp_path / "survivor" / "calls").iterdir()
            call = json.loads((call_dir / "call.json").read_text())
            assert call["end_reason"] == "bot_lost" and call["handed_over"]
            assert call["job_id"] == ready["job_id"]  # the call's own job, queued once
            async with httpx.AsyncClient(base_url=survivor.http_url) as client:
                body = await wait_done(client, call["job_id"])
            assert body["status"] == "completed", body
            text = " ".join(s["text"] for s in body["transcript"]["segments"])
            assert wer(librivox_reference()[clip.stem], text) < 0.1, text
            # the checkpoint parts are gone once the call is handed over
            store = survivor.service.services.store
            names = await store.file_names(f"calls/{call['call_id']}")
            assert not [n for n in names if ".part" in n or n.startswith("checkpoint")], names
    finally:
        stop_process(lost_bot)
