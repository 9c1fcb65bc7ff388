"""``kill -9`` of ``roomscribe serve`` in the middle of a call, then a restart on the same data
dir: the recording and the live finals survive, and the call is found, ended as
``interrupted`` and handed over to its one post-call job."""

import asyncio
import json
import signal
import struct
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect

from tests.api_helpers import wait_done, wer
from tests.bridge_peers import utterance
from tests.conftest import free_port, librivox_files, librivox_reference
from tests.listen_helpers import Session, receive_all
from tests.service_helpers import jobs_of, roomscribe_process, stop_process, wait_http

pytestmark = pytest.mark.timeout(300)

FIRST = "sense_and_sensibility_01_austen_64kb-0890"
SECOND = "sense_and_sensibility_01_austen_64kb-0930"


def serve_env(nats_url: str, port: int) -> dict[str, str]:
    return {
        "NATS_URL": nats_url,
        "ROOMSCRIBE_NATS__SUBJECT_PREFIX": "rs-crash",
        "ROOMSCRIBE_API__PORT": str(port),
        "ROOMSCRIBE_POSTCALL__MODEL": "whisper-tiny.en",
        "ROOMSCRIBE_POSTCALL__SUMMARIZE": "false",
    }


async def test_a_call_cut_by_kill_9_is_recovered_once(nats_url: str, tmp_path: Path) -> None:
    librivox_files()
    refs = librivox_reference()
    data_dir, port = tmp_path / "data", free_port()
    url = f"http://127.0.0.1:{port}"
    env = serve_env(nats_url, port)
    command = ["serve", "--data-dir", str(data_dir)]
    log = tmp_path / "serve.log"
    serve = roomscribe_process(command, env, log)
    try:
        await wait_http(url)
        audio = np.concatenate(
            [utterance(FIRST), np.zeros(16_000, np.int16), utterance(SECOND)]
        ).astype("<i2")
        data = audio.tobytes()
        session = Session()
        start = {"type": "start", "language": "en", "room": "doomed", "participant": "pat"}
        async with connect(f"ws://127.0.0.1:{port}/v1/listen") as ws:
            reader = asyncio.create_task(receive_all(ws, session))
            await ws.send(json.dumps(start))
            at = 0
            while not session.of("final"):
                await ws.send(data[at : at + 3200])  # 100 ms, about real time
                at += 3200
                await asyncio.sleep(0.1)
                assert at < len(data), "no final before the audio ran out"
            serve.send_signal(signal.SIGKILL)
            serve.wait(10)
            await asyncio.wait_for(reader, 10)
        job_id = session.messages[0]["job_id"]
        sent_finals = [m["segment_id"] for m in session.of("final") if m["text"].strip()]

        (call_dir,) = (data_dir / "calls").iterdir()
        record = json.loads((call_dir / "call.json").read_text())
        assert record["ended_at"] is None and record["job_id"] == job_id
        kept = [json.loads(line)["segment_id"] for line in (call_dir / "finals.jsonl").open()]
        assert set(sent_finals) <= set(kept)

        serve = roomscribe_process(command, env, log)
        await wait_http(url)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            (call,) = (await client.get("/v1/calls")).json()["data"]
            assert call["call_id"] == call_dir.name
            assert (call["state"], call["end_reason"]) == ("handed_over", "interrupted")
            assert call["job_id"] == job_id and call["ended_at"] >= call["started_at"]
            body = await wait_done(client, job_id, limit_s=180)
            assert body["status"] == "completed", body
        wav = (call_dir / record["participants"][0]["file"]).read_bytes()
        assert struct.unpack("<I", wav[40:44])[0] == len(wav) - 44
        heard = (len(wav) - 44) / 32_000
        assert 2.0 < heard <= audio.size / 16_000
        text = " ".join(s["text"] for s in body["transcript"]["segments"])
        assert text.strip()
        spoken = refs[FIRST] if heard < 6.0 else f"{refs[FIRST]} {refs[SECOND]}"
        assert wer(" ".join(spoken.split()[: len(text.split())]), text) <= 0.2, text
        live_ids = {sid for s in body["transcript"]["segments"] for sid in s["live_segment_ids"]}
        assert set(sent_finals) <= live_ids

        # a further restart finds nothing left to hand over
        stop_process(serve)
        serve = roomscribe_process(command, env, log)
        await wait_http(url)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            await asyncio.sleep(1.0)
            jobs = await jobs_of(client)
            assert [j["id"] for j in jobs] == [job_id], jobs
            assert jobs[0]["status"] == "completed"
    finally:
        stop_process(serve)
