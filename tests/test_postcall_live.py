"""A call through the real live path (CallSession) ends -> its hand-over queues the re-pass."""

import asyncio
import json
from pathlib import Path

import numpy as np

from engines.scheduler import DecodeScheduler
from pipeline.call import CallSession
from pipeline.recorder import CallRecord
from pipeline.runtime import LiveRuntime
from pipeline.sink import CollectingSink
from tests.api_helpers import make_settings, running_api, wait_done, wer
from tests.conftest import librivox_files, librivox_reference, read_wav16
from tests.live_helpers import live_engine
from tests.webhook_receiver import webhook_receiver


async def test_ended_call_gets_repassed_with_live_segment_ids(
    nats_url: str, tmp_path: Path
) -> None:
    files = librivox_files()
    refs = librivox_reference()
    with webhook_receiver() as receiver:
        settings = make_settings(nats_url, tmp_path, postcall={"webhook_url": receiver.url})
        scheduler = DecodeScheduler(2)
        await scheduler.start()
        runtime = LiveRuntime(settings, live_engine(), scheduler, CollectingSink())
        try:
            async with running_api(settings, runtime=runtime) as (client, _):
                assert runtime.handover is not None
                call = CallSession(runtime, "retro")
                await call.start()
                alice = call.add_participant("alice", "Alice", "en", offset=0.0)
                bob = call.add_participant("bob", "Bob", "en", offset=1.0)
                alice.push(read_wav16(files[0]))
                bob.push(np.concatenate([np.zeros(8 * 16_000, np.int16), read_wav16(files[2])]))
                record = await call.end()
                hits = await asyncio.to_thread(receiver.wait_for, 1)
                ended = json.loads(hits[0].body)
                assert ended["type"] == "call.ended"
                body = await wait_done(client, ended["data"]["job_id"])
                await asyncio.to_thread(receiver.wait_for, 2)
                again = await client.post(
                    f"/v1/calls/{call.call_id}/transcribe",
                    json={"redact_pii": True, "summarize": False},
                )
                assert again.status_code == 202, again.text
                rerun = await wait_done(client, again.json()["id"])
                await asyncio.to_thread(receiver.wait_for, 3)
        finally:
            await runtime.aclose()

    assert body["status"] == "completed", body
    segments = body["transcript"]["segments"]
    alice_text = " ".join(s["text"] for s in segments if s["speaker"] == "alice")
    bob_text = " ".join(s["text"] for s in segments if s["speaker"] == "bob")
    assert wer(refs[files[0].stem], alice_text) <= 0.15, alice_text
    assert wer(refs[files[2].stem], bob_text) <= 0.15, bob_text
    assert min(s["start"] for s in segments if s["speaker"] == "bob") > 8.5

    live = {
        f.segment_id: f for f in CallRecord.load(record.directory).live_finals() if f.text.strip()
    }
    carried = [sid for s in segments for sid in s["live_segment_ids"]]
    assert live and set(carried) == set(live)
    assert len(carried) == len(set(carried))
    for segment in segments:
        for sid in segment["live_segment_ids"]:
            assert live[sid].participant == segment["speaker"]
    events = [json.loads(h.body) for h in receiver.received]
    assert [e["type"] for e in events] == ["call.ended", "transcript.revised", "transcript.revised"]
    assert events[2]["data"]["transcript_id"] == rerun["id"]
    assert rerun["status"] == "completed", rerun
    assert rerun["source"]["call_id"] == call.call_id
    assert rerun["transcript"]["redacted"] == ["card", "email", "iban", "phone", "ssn"]
    assert [s["id"] for s in rerun["transcript"]["segments"]] == [s["id"] for s in segments]
