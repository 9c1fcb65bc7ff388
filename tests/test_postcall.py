"""A recorded two-person call -> post-call job (default model, whisper-base) -> merged transcript."""

import asyncio
import json
from pathlib import Path

import numpy as np

from pipeline.handover import CallHandover
from pipeline.postcall import attach_live_ids
from pipeline.recorder import CallRecorder, ParticipantRecord
from protocol.frames import CaptionFrame, Word
from protocol.transcript import Segment
from protocol.webhooks import SIGNATURE_HEADER, verify
from tests.api_helpers import make_settings, running_api, wait_done, wer
from tests.conftest import librivox_files, librivox_reference, read_wav16
from tests.webhook_receiver import webhook_receiver

SR = 16_000


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), dtype=np.int16)


def _final(participant: str, segment_id: str, start: float, end: float, text: str) -> CaptionFrame:
    tokens = text.split()
    step = (end - start) / len(tokens)
    words = [
        Word(word=t, start=start + i * step, end=start + (i + 1) * step, confidence=0.8)
        for i, t in enumerate(tokens)
    ]
    return CaptionFrame(
        type="final", room="standup", participant=participant, segment_id=segment_id, rev=2, seq=3,
        start=start, end=end, text=text, words=words, model="whisper-tiny.en",
    )  # fmt: skip


def record_call(calls_dir: Path) -> tuple[str, dict[str, str]]:
    """Alice speaks at 0 s and 14.1 s, Bob (joined at 2 s) at 8 s; live finals as the live path left them."""
    files = librivox_files()
    refs = librivox_reference()
    first, second, third = files[0], files[3], files[2]
    recorder = CallRecorder(calls_dir, "call-1", "standup")
    alice = recorder.track("alice", "Alice", "en", offset=0.0)
    alice.write(np.concatenate([read_wav16(first), _silence(7.0), read_wav16(second)]))
    alice.close()
    bob = recorder.track("bob", "Bob", "en", offset=2.0)
    bob.write(np.concatenate([_silence(6.0), read_wav16(third)]))
    bob.close()
    recorder.final(
        _final("alice", "live-a1", 0.3, 6.9, "and mister john dashwood had then leisure")
    )
    recorder.final(_final("bob", "live-b1", 8.2, 13.1, "unless to be rather cold hearted"))
    recorder.final(_final("alice", "live-a2", 14.3, 20.0, "if he had married a more amiable woman"))
    recorder.close("ended")
    return "call-1", {
        "alice": f"{refs[first.stem]} {refs[second.stem]}",
        "bob": refs[third.stem],
    }


async def test_recorded_call_is_repassed_merged_summarized_and_announced(
    nats_url: str, tmp_path: Path
) -> None:
    with webhook_receiver() as receiver:
        settings = make_settings(
            nats_url,
            tmp_path,
            postcall={"model": "whisper-base", "summarize": True, "webhook_url": receiver.url},
        )
        call_id, references = record_call(settings.calls_dir)
        async with running_api(settings) as (client, services):
            from pipeline.recorder import CallRecord

            handover = CallHandover(services.store, services.notifier, settings)
            await handover.hand_over(CallRecord.load(settings.calls_dir / call_id))
            (listed,) = (await client.get("/v1/transcripts")).json()["data"]
            body = await wait_done(client, listed["id"], limit_s=240)
            assert body["status"] == "completed", body
            hits = await asyncio.to_thread(receiver.wait_for, 2, 30.0)
            asked = await client.post(
                f"/v1/transcripts/{body['id']}/ask",
                json={"question": "What could Mr. Dashwood do for them?"},
            )
            assert asked.status_code == 200, asked.text
            answer = asked.json()

    transcript = body["transcript"]
    assert transcript["model"] == "whisper-base"
    assert body["source"] == {**body["source"], "type": "call", "call_id": call_id}
    assert [(s["id"], s["name"]) for s in transcript["speakers"]] == [
        ("alice", "Alice"),
        ("bob", "Bob"),
    ]
    segments = transcript["segments"]
    starts = [s["start"] for s in segments]
    assert starts == sorted(starts)
    for speaker, reference in references.items():
        text = " ".join(s["text"] for s in segments if s["speaker"] == speaker)
        assert wer(reference, text) <= 0.15, (speaker, text)
    bob = [s for s in segments if s["speaker"] == "bob"]
    alice = [s for s in segments if s["speaker"] == "alice"]
    assert alice[0]["start"] < 1.0
    assert all(s["start"] > 7.5 and s["end"] < 13.8 for s in bob), bob
    assert any(s["start"] > 13.5 for s in alice)

    ids = [s["id"] for s in segments]
    assert len(ids) == len(set(ids))
    carried = {sid: s for s in segments for sid in s["live_segment_ids"]}
    assert set(carried) == {"live-a1", "live-b1", "live-a2"}
    assert carried["live-b1"]["speaker"] == "bob"
    assert carried["live-a2"]["speaker"] == "alice" and carried["live-a2"]["start"] > 13.5
    assert all(s["id"] == s["live_segment_ids"][0] for s in segments if s["live_segment_ids"])

    summary = transcript["summary"]
    items = [
        *summary["summary"],
        *summary["topics"],
        *summary["action_items"],
        *summary["decisions"],
    ]
    assert summary["summary"]
    by_id = {s["id"]: s for s in segments}
    for item in items:
        assert item["segment_ids"] and all(sid in by_id for sid in item["segment_ids"])
        cited = [by_id[sid] for sid in item["segment_ids"]]
        assert (
            min(s["start"] for s in cited)
            <= item["start"]
            < item["end"]
            <= max(s["end"] for s in cited)
        )

    assert answer["answer"] and answer["passages"]
    assert all(p["segment_id"] in by_id for p in answer["passages"])

    events = {json.loads(hit.body)["type"]: hit for hit in hits}
    assert set(events) == {"call.ended", "transcript.revised"}
    for hit in hits:
        assert verify("test-secret", hit.body, hit.headers[SIGNATURE_HEADER])
    revised = json.loads(events["transcript.revised"].body)["data"]
    assert (revised["transcript_id"], revised["call_id"]) == (body["id"], call_id)
    assert json.loads(events["call.ended"].body)["data"]["job_id"] == body["id"]


def test_live_ids_go_to_the_best_overlapping_segment_once() -> None:
    alice = ParticipantRecord("alice", "Alice", None, "alice.wav", 0.0)
    bob = ParticipantRecord("bob", "Bob", None, "bob.wav", 0.0)

    def seg(speaker: str, start: float, end: float) -> Segment:
        return Segment(id="", speaker=speaker, start=start, end=end, text="x")

    pieces = [
        (alice, seg("alice", 0.0, 4.0)),
        (bob, seg("bob", 1.0, 5.0)),
        (alice, seg("alice", 4.2, 9.0)),
        (alice, seg("alice", 20.0, 22.0)),
    ]
    finals = [
        _final("alice", "a1", 0.5, 3.0, "one"),
        _final("alice", "a2", 3.5, 8.0, "two"),  # overlaps pieces 0 and 2; 2 more
        _final("bob", "b1", 0.5, 6.0, "three"),  # bob's only: never an alice segment
        _final("alice", "a3", 22.6, 23.0, "four"),  # no overlap, 0.6 s after piece 3
        _final("alice", "a4", 40.0, 41.0, "five"),  # nothing near: left out
        _final("alice", "a0", 1.0, 2.0, "zero"),
    ]
    assert attach_live_ids(pieces, finals) == {0: ["a1", "a0"], 1: ["b1"], 2: ["a2"], 3: ["a3"]}


def test_a_segment_spanning_a_long_pause_is_split_into_turns() -> None:
    from engines.base import RecognizedWord
    from engines.whisper_batch import BatchSegment, split_at_pauses

    words = (
        RecognizedWord("We", 1.0, 1.2),
        RecognizedWord("agree.", 1.2, 1.6),
        RecognizedWord("Next", 9.0, 9.3),
        RecognizedWord("item.", 9.3, 9.8),
    )
    parts = split_at_pauses(BatchSegment(1.0, 9.8, "We agree. Next item.", words))
    assert [(p.start, p.end, p.text) for p in parts] == [
        (1.0, 1.6, "We agree."),
        (9.0, 9.8, "Next item."),
    ]
    assert split_at_pauses(BatchSegment(1.0, 1.6, "We agree.", words[:2]))[0].text == "We agree."
