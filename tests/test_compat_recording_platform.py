"""The recording platform's asynchronous transcription flow against the production composition:
its webhooks, the document's own create-transcript request (bare key, trailing comma and
all), the retrieve call, the words JSON behind ``download_url``, the per-recording cap and
deletion, over calls this service recorded."""

import asyncio
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.recorder import CallRecord, CallRecorder
from tests.api_helpers import make_settings, wer
from tests.service_helpers import served
from tests.test_api_diarize import diarization_models  # noqa: F401 - the fixture
from tests.test_call_handover import listen_call
from tests.test_postcall import record_call
from tests.webhook_receiver import Receiver, webhook_receiver

pytestmark = pytest.mark.timeout(500)

KEY = "platform-key"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

# the document's own request body, trailing comma included
CREATE = b"""
{
  "provider": {
    "recallai_async": {
      "language_code": "auto"
    }
  },
  "diarization": {
    "use_separate_streams_when_available": true,
  }
}
"""
HEADERS = {"Authorization": KEY, "accept": "application/json", "content-type": "application/json"}


def _events(receiver: Receiver) -> list[dict[str, Any]]:
    with receiver.lock:
        return [json.loads(hit.body) for hit in receiver.received]


async def _event(receiver: Receiver, name: str, key: str, value: str) -> dict[str, Any]:
    async with asyncio.timeout(150):
        while True:
            for event in _events(receiver):
                if event["event"] == name and event["data"].get(key, {}).get("id") == value:
                    return event
            await asyncio.sleep(0.2)


def _check_event(event: dict[str, Any], name: str, recording_id: str, room: str) -> None:
    status = event["data"]["data"]
    assert set(status) == {"code", "sub_code", "updated_at"}
    assert status["code"] == name.split(".")[1]
    assert ISO.match(status["updated_at"]), status
    assert event["data"]["recording"] == {"id": recording_id, "metadata": {"room": room}}
    assert set(event["data"]["bot"]) == {"id", "metadata"}


def _instant(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _empty_call(calls_dir: Path) -> str:
    CallRecorder(calls_dir, "call-empty", "nobody").close("ended")
    return "call-empty"


async def test_recording_flow_per_participant_streams(nats_url: str, tmp_path: Path) -> None:
    with webhook_receiver() as receiver:
        settings = make_settings(
            nats_url,
            tmp_path,
            api={"api_keys": [KEY]},
            postcall={"recording_platform_webhook_url": receiver.url},
        )
        call_id, references = record_call(settings.calls_dir)
        empty_id = _empty_call(settings.calls_dir)
        started_at = CallRecord.load(settings.calls_dir / call_id).started_at
        async with (
            served(settings) as service,
            httpx.AsyncClient(base_url=service.http_url, timeout=60) as client,
        ):
            done = await _event(receiver, "recording.done", "recording", call_id)
            failed_recording = await _event(receiver, "recording.failed", "recording", empty_id)
            created = await client.post(
                f"/api/v1/recording/{call_id}/create_transcript/",
                content=CREATE,
                headers=HEADERS,
            )
            assert created.status_code == 200, created.text
            artifact = created.json()
            transcript_id = artifact["id"]
            finished = await _event(receiver, "transcript.done", "transcript", transcript_id)
            retrieved = await client.get(f"/api/v1/transcript/{transcript_id}/", headers=HEADERS)
            url = retrieved.json()["data"]["download_url"]
            words = await client.get(url)  # presigned: no key
            tampered = await client.get(url.replace("signature=", "signature=0"))
            expired = await client.get(re.sub(r"expires=\d+", "expires=1", url))
            job = (await client.get(f"/v1/transcripts/{transcript_id}", headers=HEADERS)).json()
            anonymous = await client.get(f"/api/v1/transcript/{transcript_id}/")
            bearer = await client.get(
                f"/api/v1/transcript/{transcript_id}/",
                headers={"Authorization": f"Bearer {KEY}"},
            )
            deliveries = (
                await client.get(f"/v1/transcripts/{transcript_id}/webhooks", headers=HEADERS)
            ).json()["data"]

            # the mix of a call nobody spoke in fails, and says so
            mixed = await client.post(
                f"/api/v1/recording/{empty_id}/create_transcript/",
                json={"provider": {"recallai_async": {"language_code": "en"}}},
                headers=HEADERS,
            )
            failed = await _event(receiver, "transcript.failed", "transcript", mixed.json()["id"])
            failed_artifact = (
                await client.get(f"/api/v1/transcript/{mixed.json()['id']}/", headers=HEADERS)
            ).json()

            # ten transcripts per recording that did not fail; deleting one makes room
            separate = {
                "provider": {"recallai_async": {"language_code": "auto"}},
                "diarization": {"use_separate_streams_when_available": True},
                "metadata": {"attempt": 0},
            }
            made = []
            for attempt in range(10):
                separate["metadata"] = {"attempt": attempt}
                answer = await client.post(
                    f"/api/v1/recording/{empty_id}/create_transcript/",
                    json=separate,
                    headers=HEADERS,
                )
                assert answer.status_code == 200, answer.text
                made.append(answer.json())
            refused = await client.post(
                f"/api/v1/recording/{empty_id}/create_transcript/",
                json=separate,
                headers=HEADERS,
            )
            gone = made[3]["id"]
            deleted = await client.delete(f"/api/v1/transcript/{gone}/", headers=HEADERS)
            after = await client.get(f"/api/v1/transcript/{gone}/", headers=HEADERS)
            again = await client.delete(f"/api/v1/transcript/{gone}/", headers=HEADERS)
            removed = await _event(receiver, "transcript.deleted", "transcript", gone)
            async with asyncio.timeout(60):
                while True:  # the nine left finish one after the other
                    listed = (
                        await client.get(
                            "/api/v1/transcript/",
                            params={"recording_id": empty_id, "status_code": "done"},
                            headers=HEADERS,
                        )
                    ).json()
                    if len(listed["results"]) >= 9:
                        break
                    await asyncio.sleep(0.2)
            room = await client.post(
                f"/api/v1/recording/{empty_id}/create_transcript/",
                json=separate,
                headers=HEADERS,
            )

            async def create(body: Any, recording: str = call_id) -> httpx.Response:
                content = body if isinstance(body, bytes) else json.dumps(body).encode()
                return await client.post(
                    f"/api/v1/recording/{recording}/create_transcript/",
                    content=content,
                    headers=HEADERS,
                )

            bad = {
                "unknown recording": await create(separate, "no-such-call"),
                "no body": await create(b""),
                "malformed": await create(b'{"provider": '),
                "no provider": await create({"diarization": {}}),
                "other provider": await create({"provider": {"deepgram_async": {}}}),
                "bad language": await create(
                    {"provider": {"recallai_async": {"language_code": "xx"}}}
                ),
                "not an object": await create([1, 2]),
                "unknown field": await create({**separate, "speed": "fast"}),
            }
            missing = await client.get("/api/v1/transcript/tr_nothing/", headers=HEADERS)
            schema = (await client.get("/openapi.json", headers=HEADERS)).json()["paths"]

    # the recording's webhooks
    _check_event(done, "recording.done", call_id, "standup")
    assert done["data"]["data"]["sub_code"] is None
    _check_event(failed_recording, "recording.failed", empty_id, "nobody")
    assert failed_recording["data"]["data"]["sub_code"] == "no_audio"

    # the artifact as created, then as retrieved
    assert set(artifact) >= {
        "id",
        "recording",
        "created_at",
        "status",
        "data",
        "diarization",
        "metadata",
        "provider",
    }
    assert artifact["recording"]["id"] == call_id
    assert artifact["status"]["code"] == "processing" and artifact["status"]["sub_code"] is None
    assert artifact["data"]["download_url"] is None
    assert artifact["diarization"]["use_separate_streams_when_available"] is True
    assert artifact["provider"] == {"recallai_async": {"language_code": "auto"}}
    assert ISO.match(artifact["created_at"])
    _check_event(finished, "transcript.done", call_id, "standup")
    assert finished["data"]["transcript"] == {"id": transcript_id, "metadata": {}}
    assert retrieved.status_code == 200
    assert retrieved.json()["status"]["code"] == "done"
    assert url.startswith(service.http_url) and "signature=" in url
    assert job["kind"] == "postcall" and job["source"]["call_id"] == call_id
    assert (anonymous.status_code, bearer.status_code) == (401, 200)
    assert {d["key"] for d in deliveries} >= {f"{transcript_id}.relay.transcript.done"}

    # the words JSON: who said what, with call-relative and wall-clock times
    assert words.status_code == 200, words.text
    entries = words.json()
    assert entries
    said: dict[str, list[str]] = {"Alice": [], "Bob": []}
    previous = 0.0
    for entry in entries:
        assert set(entry) == {"participant", "language_code", "words"}
        person = entry["participant"]
        assert set(person) == {"id", "name", "is_host", "platform", "extra_data", "email"}
        assert isinstance(person["id"], int)
        assert (person["id"], person["name"]) in ((1, "Alice"), (2, "Bob"))
        assert person["extra_data"] == {"participant": person["name"].lower()}
        assert entry["language_code"] == "en"
        assert entry["words"][0]["start_timestamp"]["relative"] >= previous - 0.01
        previous = entry["words"][0]["start_timestamp"]["relative"]
        for word in entry["words"]:
            assert set(word) == {"text", "start_timestamp", "end_timestamp"}
            start, end = word["start_timestamp"], word["end_timestamp"]
            assert 0 <= start["relative"] <= end["relative"]
            for stamp in (start, end):
                assert _instant(stamp["absolute"]) == pytest.approx(
                    started_at + stamp["relative"], abs=0.002
                )
            if person["name"] == "Bob":
                assert start["relative"] > 7.5 and end["relative"] < 13.8
            said[person["name"]].append(word["text"])
    assert wer(references["alice"], " ".join(said["Alice"])) <= 0.25, said
    assert wer(references["bob"], " ".join(said["Bob"])) <= 0.25, said
    assert (tampered.status_code, expired.status_code) == (403, 403)
    assert set(tampered.json()) == {"detail"}

    # the mix of an empty call fails: webhook and artifact agree
    assert mixed.status_code == 200
    assert mixed.json()["diarization"]["use_separate_streams_when_available"] is False
    _check_event(failed, "transcript.failed", empty_id, "nobody")
    assert failed["data"]["data"]["sub_code"] == "empty_audio"
    assert failed_artifact["status"]["code"] == "failed"
    assert failed_artifact["status"]["sub_code"] == "empty_audio"
    assert failed_artifact["data"]["download_url"] is None

    # the cap and deletion
    assert refused.status_code == 400 and "10" in refused.json()["detail"]
    assert deleted.status_code == 204
    assert after.status_code == 404 and after.json() == {"detail": "Not found."}
    assert again.status_code == 404
    _check_event(removed, "transcript.deleted", empty_id, "nobody")
    assert removed["data"]["transcript"] == {"id": gone, "metadata": {"attempt": 3}}
    assert room.status_code == 200
    assert (listed["next"], listed["previous"]) == (None, None)
    listed_ids = [a["id"] for a in listed["results"]]
    assert gone not in listed_ids and mixed.json()["id"] not in listed_ids  # deleted, failed
    assert sorted(listed_ids) == sorted(a["id"] for a in made if a["id"] != gone)
    assert all(a["data"]["download_url"] for a in listed["results"])

    # bad input, in the platform's shapes
    assert bad["unknown recording"].status_code == 404
    assert bad["unknown recording"].json() == {"detail": "Not found."}
    for name, response in bad.items():
        if name != "unknown recording":
            assert response.status_code == 400, (name, response.text)
    assert bad["no body"].json() == {"provider": ["This field is required."]}
    assert set(bad["malformed"].json()) == {"detail"}
    assert "provider" in bad["no provider"].json()
    assert "provider.recallai_async" in bad["other provider"].json()
    assert "provider.deepgram_async" in bad["other provider"].json()
    assert list(bad["bad language"].json()) == ["provider.recallai_async.language_code"]
    assert "non_field_errors" in bad["not an object"].json()
    assert "speed" in bad["unknown field"].json()
    assert missing.status_code == 404

    for path in (
        "/api/v1/recording/{recording_id}/create_transcript/",
        "/api/v1/transcript/{transcript_id}/",
        "/api/v1/transcript/",
        "/api/v1/download/transcript/{transcript_id}.json",
    ):
        assert path in schema


async def test_recording_mix_is_diarized_and_a_live_call_announced(
    nats_url: str,
    tmp_path: Path,
    diarization_models: Path,  # noqa: F811
) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "diarization").symlink_to(diarization_models)
    with webhook_receiver() as receiver:
        settings = make_settings(
            nats_url, tmp_path, postcall={"recording_platform_webhook_url": receiver.url}
        )
        call_id, references = record_call(settings.calls_dir)
        started_at = CallRecord.load(settings.calls_dir / call_id).started_at
        async with (
            served(settings) as service,
            httpx.AsyncClient(base_url=service.http_url, timeout=60) as client,
        ):
            created = await client.post(
                f"/api/v1/recording/{call_id}/create_transcript/",
                json={
                    "provider": {"recallai_async": {"language_code": "en"}},
                    "diarization": {"use_separate_streams_when_available": False},
                },
            )
            assert created.status_code == 200, created.text
            transcript_id = created.json()["id"]
            # a call that ends while the service runs: recording.done as it is handed over
            job_id = await listen_call(service)
            calls = (await client.get("/v1/calls")).json()["data"]
            (live_call,) = [c["call_id"] for c in calls if c["job_id"] == job_id]
            live_done = await _event(receiver, "recording.done", "recording", live_call)
            await _event(receiver, "transcript.done", "transcript", transcript_id)
            retrieved = (await client.get(f"/api/v1/transcript/{transcript_id}/")).json()
            job = (await client.get(f"/v1/transcripts/{transcript_id}")).json()
            entries = (await client.get(retrieved["data"]["download_url"])).json()

    _check_event(live_done, "recording.done", live_call, "by-socket")
    assert job["kind"] == "batch" and job["options"]["diarize"] is True
    assert job["source"]["call_id"] == call_id
    speakers = {s["id"] for s in job["transcript"]["speakers"]}
    assert entries
    heard = []
    for entry in entries:
        person = entry["participant"]
        assert person["name"] is None and person["extra_data"]["speaker"] in speakers
        for word in entry["words"]:
            at = word["start_timestamp"]
            assert _instant(at["absolute"]) == pytest.approx(started_at + at["relative"], abs=0.002)
            heard.append((at["relative"], word["text"]))
    # the mix keeps each track at its offset: Bob's words (8-13 s) fall between Alice's
    bob = " ".join(text for at, text in sorted(heard) if 7.5 < at < 13.8)
    alice = " ".join(text for at, text in sorted(heard) if not 7.5 < at < 13.8)
    assert wer(references["bob"], bob) <= 0.3, bob
    assert wer(references["alice"], alice) <= 0.3, alice
