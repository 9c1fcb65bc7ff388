"""The post-call transcription API for recordings, against the production composition: the
document's own trigger and poll requests over a call this service recorded."""

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api_helpers import make_settings, wait_done, wer
from tests.service_helpers import served
from tests.test_postcall import record_call

pytestmark = pytest.mark.timeout(400)

KEY = "recordings-key"
LINE = re.compile(r"^\[(\d\d):(\d\d):(\d\d)\] (Alice|Bob): (.+)$")


async def _poll(client: httpx.AsyncClient, transcription_id: str) -> list[dict[str, Any]]:
    """Every answer of the document's poll loop until completed or failed."""
    answers = []
    async with asyncio.timeout(300):
        while True:
            response = await client.get(f"/v1/transcriptions/{transcription_id}")
            assert response.status_code == 200, response.text
            answers.append(response.json())
            if answers[-1]["status"] in ("completed", "failed"):
                return answers
            await asyncio.sleep(0.3)


async def test_a_recorded_call_is_transcribed_and_polled_as_documented(
    nats_url: str, tmp_path: Path
) -> None:
    settings = make_settings(nats_url, tmp_path, api={"api_keys": [KEY]})
    call_id, references = record_call(settings.calls_dir)  # handed over when the service starts
    headers = {"Authorization": f"Bearer {KEY}"}
    async with (
        served(settings) as service,
        httpx.AsyncClient(base_url=service.http_url, headers=headers, timeout=30) as client,
    ):
        async with asyncio.timeout(30):
            while not (await client.get("/v1/calls")).json()["data"][0]["job_id"]:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        # the document's trigger, as its JavaScript example sends it
        triggered = await client.post(
            f"/v1/recordings/{call_id}/transcribe",
            content=b'{"language":"en"}',
            headers={"Content-Type": "application/json"},
        )
        assert triggered.status_code == 202, triggered.text
        accepted = triggered.json()
        assert set(accepted) == {"transcriptionId", "status"}
        assert accepted["status"] == "queued"
        transcription_id = accepted["transcriptionId"]
        answers = await _poll(client, transcription_id)
        job = await wait_done(client, transcription_id)
        no_body = await client.post(f"/v1/recordings/{call_id}/transcribe")

        unknown = await client.post("/v1/recordings/no-such-call/transcribe", json={})
        malformed = await client.post(
            f"/v1/recordings/{call_id}/transcribe",
            content=b'{"language":',
            headers={"Content-Type": "application/json"},
        )
        extra = await client.post(f"/v1/recordings/{call_id}/transcribe", json={"lang": "en"})
        language = await client.post(
            f"/v1/recordings/{call_id}/transcribe", json={"language": "xx"}
        )
        missing = await client.get("/v1/transcriptions/tr_000000000000deadbeef")
        not_audio = await client.post(
            "/v1/transcripts", files={"file": ("notes.txt", b"these are not sounds " * 50)}
        )
        failed = await _poll(client, not_audio.json()["id"])
        anonymous = await client.get(
            f"/v1/transcriptions/{transcription_id}", headers={"Authorization": ""}
        )
        listed = (await client.get("/openapi.json")).json()["paths"]

    *waiting, done = answers
    for answer in waiting:
        assert set(answer) == {"transcriptionId", "status"}, answer
        assert answer["status"] in ("queued", "processing")
    assert set(done) == {
        "transcriptionId",
        "status",
        "language",
        "duration",
        "segmentCount",
        "text",
    }, done
    assert done["transcriptionId"] == transcription_id and done["status"] == "completed"
    assert done["language"] == "en"
    transcript = job["transcript"]
    assert job["source"]["call_id"] == call_id and job["kind"] == "postcall"
    assert isinstance(done["duration"], str) and isinstance(done["segmentCount"], str)
    assert float(done["duration"]) == pytest.approx(transcript["duration"], abs=0.001)
    assert float(done["duration"]) > 20.0
    lines = done["text"].split("\n")
    assert done["segmentCount"] == str(len(lines)) == str(len(transcript["segments"]))
    said: dict[str, list[str]] = {"Alice": [], "Bob": []}
    previous = -1
    for line, segment in zip(lines, transcript["segments"], strict=True):
        match = LINE.match(line)
        assert match, line
        hours, minutes, seconds, name, text = match.groups()
        at = int(hours) * 3600 + int(minutes) * 60 + int(seconds)
        assert at == int(segment["start"]) and at >= previous
        previous = at
        assert text == " ".join(segment["text"].split())
        said[name].append(text)
    assert wer(references["alice"], " ".join(said["Alice"])) <= 0.25, said
    assert wer(references["bob"], " ".join(said["Bob"])) <= 0.25, said

    assert no_body.status_code == 202 and set(no_body.json()) == {"transcriptionId", "status"}
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "NOT_FOUND")
    assert malformed.status_code == 400
    assert extra.status_code == 422 and "lang" in extra.json()["error"]["message"]
    assert language.status_code == 422
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "NOT_FOUND")
    assert failed[-1]["status"] == "failed"
    assert set(failed[-1]) == {"transcriptionId", "status", "error"}
    assert failed[-1]["error"].startswith("UNSUPPORTED_FORMAT")
    assert anonymous.status_code == 401
    assert "/v1/recordings/{recordingId}/transcribe" in listed
    assert "/v1/transcriptions/{transcriptionId}" in listed
