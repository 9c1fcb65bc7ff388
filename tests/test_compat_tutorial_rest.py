"""The tutorial's batch REST API (seed 000) against the served app: its example request,
its 202 answer, status words, result fields, SRT/VTT exports and the webhook check."""

import asyncio
import io
import json
import subprocess
from pathlib import Path

import httpx
import pytest
import srt
import webvtt

from engines.diarization_export import ExportUnavailableError, prepare_diarization
from protocol.webhooks import SIGNATURE_HEADER, verify
from tests.api_helpers import make_settings, wait_done, wer
from tests.conftest import librivox_files, librivox_reference
from tests.pyannote_sample import cache_root
from tests.service_helpers import served
from tests.test_api import file_server
from tests.webhook_receiver import webhook_receiver

# the tutorial's request example, as printed (only the host of audio_url differs)
EXAMPLE_REQUEST = {
    "audio_url": "https://storage.example.com/meetings/abc123.m4a",
    "diarize": True,
    "language": "en",
    "redact_pii": True,
    "summarize": True,
}


@pytest.fixture(scope="session")
def diarization_models() -> Path:
    try:
        return prepare_diarization(cache_root() / "diarization-models")
    except ExportUnavailableError as exc:
        pytest.skip(f"diarization models are not prepared and cannot be exported here: {exc}")


def _m4a(wav: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav), "-c:a", "aac", str(dest)],
        check=True,
    )


async def test_tutorial_example_request_result_and_exports(
    nats_url: str, tmp_path: Path, diarization_models: Path
) -> None:
    wav = librivox_files()[0]
    reference = librivox_reference()[wav.stem]
    site = tmp_path / "site"
    await asyncio.to_thread(_m4a, wav, site / "meetings" / "abc123.m4a")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "diarization").symlink_to(diarization_models)
    settings = make_settings(nats_url, tmp_path)
    with file_server(site) as base:
        async with (
            served(settings) as service,
            httpx.AsyncClient(base_url=service.http_url, timeout=30) as client,
        ):
            body = {**EXAMPLE_REQUEST, "audio_url": f"{base}/meetings/abc123.m4a"}
            created = await client.post("/v1/transcripts", json=body)
            assert created.status_code == 202, created.text
            accepted = created.json()
            assert accepted["status"] == "queued"
            job_id = accepted["id"]
            assert isinstance(job_id, str) and job_id
            assert created.headers["Location"] == f"/v1/transcripts/{job_id}"

            queued = (await client.get(f"/v1/transcripts/{job_id}")).json()
            assert queued["status"] in ("queued", "processing")
            assert queued["segments"] is None and queued["intelligence"] is None

            job = await wait_done(client, job_id, limit_s=240)
            assert job["status"] == "completed", job
            assert job["id"] == job_id
            assert job["options"]["diarize"] is True and job["options"]["redact_pii"] is True
            segments = job["segments"]
            assert segments, job
            for segment in segments:
                assert set(segment) == {"start", "end", "text", "speaker", "confidence"}
                assert 0 <= segment["start"] <= segment["end"] <= job["transcript"]["duration"]
                assert segment["speaker"] == "S1"
                assert 0.0 < segment["confidence"] <= 1.0
            text = " ".join(s["text"] for s in segments)
            assert wer(reference, text) <= 0.15, text
            assert text == " ".join(s["text"] for s in job["transcript"]["segments"])

            intelligence = job["intelligence"]
            assert set(intelligence) == {"summary", "topics", "actions", "decisions"}
            assert intelligence["summary"]
            core = job["transcript"]["summary"]
            assert intelligence["summary"] == " ".join(i["text"] for i in core["summary"])
            assert "power to do for them" in intelligence["summary"]
            assert intelligence["topics"] == [t["text"] for t in core["topics"]]
            assert isinstance(intelligence["topics"], list)
            assert isinstance(intelligence["actions"], list)
            assert isinstance(intelligence["decisions"], list)

            srt_text = (await client.get(f"/v1/transcripts/{job_id}.srt")).text
            cues = list(srt.parse(srt_text))
            assert cues and wer(reference, " ".join(c.content for c in cues)) <= 0.15
            vtt = await client.get(f"/v1/transcripts/{job_id}.vtt")
            assert vtt.headers["content-type"].startswith("text/vtt")
            captions = webvtt.from_buffer(io.StringIO(vtt.text))
            assert wer(reference, " ".join(c.text for c in captions)) <= 0.15

            failed_id = (
                await client.post(
                    "/v1/transcripts", json={**body, "audio_url": f"{base}/meetings/gone.m4a"}
                )
            ).json()["id"]
            failed = await wait_done(client, failed_id)
            assert failed["status"] == "failed"
            assert failed["error"]["code"] == "DOWNLOAD_FAILED"
            assert failed["segments"] is None

            unknown = await client.get("/v1/transcripts/job_e2c1b4")
            assert unknown.status_code == 404
            assert unknown.json()["error"]["code"] == "NOT_FOUND"
            assert (await client.get("/v1/transcripts/job_e2c1b4.srt")).status_code == 404
            no_url = await client.post("/v1/transcripts", json={"diarize": True})
            assert no_url.status_code == 422
            assert "audio_url" in no_url.json()["error"]["message"]
            wrong = await client.post("/v1/transcripts", json={**body, "diarize": "sometimes"})
            assert wrong.status_code == 422


async def test_webhook_test_sends_a_signed_event(nats_url: str, tmp_path: Path) -> None:
    with webhook_receiver() as receiver:
        receiver.status_for_path["/broken"] = 500
        settings = make_settings(nats_url, tmp_path, postcall={"run_worker": False})
        async with (
            served(settings) as service,
            httpx.AsyncClient(base_url=service.http_url, timeout=30) as client,
        ):
            sent = await client.post("/v1/webhooks/test", json={"url": receiver.url})
            assert sent.status_code == 200, sent.text
            result = sent.json()
            assert result["status"] == "delivered"
            assert result["url"] == receiver.url
            assert [a["status_code"] for a in result["attempts"]] == [200]
            (hit,) = await asyncio.to_thread(receiver.wait_for, 1)
            assert verify("test-secret", hit.body, hit.headers[SIGNATURE_HEADER])
            event = json.loads(hit.body)
            assert (event["type"], event["id"]) == ("webhook.test", result["id"])

            broken = url = receiver.url.replace("/hook", "/broken")
            answered = (await client.post("/v1/webhooks/test", json={"url": broken})).json()
            assert answered["status"] == "pending"  # retried like any webhook
            assert answered["attempts"][0]["status_code"] == 500

            missing = await client.post("/v1/webhooks/test")
            assert missing.status_code == 422
            assert missing.json()["error"]["code"] == "INVALID_REQUEST"
            malformed = await client.post(
                "/v1/webhooks/test",
                content=b'{"url": ',
                headers={"Content-Type": "application/json"},
            )
            assert malformed.status_code == 400
            extra = await client.post("/v1/webhooks/test", json={"url": url, "secret": "x"})
            assert extra.status_code == 422
            service.service.settings.api.allow_private_urls = False
            refused = await client.post("/v1/webhooks/test", json={"url": receiver.url})
            assert (refused.status_code, refused.json()["error"]["code"]) == (400, "FORBIDDEN_URL")


async def test_webhook_test_uses_the_configured_url_and_needs_a_key(
    nats_url: str, tmp_path: Path
) -> None:
    with webhook_receiver() as receiver:
        settings = make_settings(
            nats_url,
            tmp_path,
            api={"api_keys": ["k1"]},
            postcall={"run_worker": False, "webhook_url": receiver.url},
        )
        async with (
            served(settings) as service,
            httpx.AsyncClient(base_url=service.http_url, timeout=30) as client,
        ):
            denied = await client.post("/v1/webhooks/test")
            assert denied.status_code == 401
            sent = await client.post("/v1/webhooks/test", headers={"Authorization": "Bearer k1"})
            assert sent.status_code == 200, sent.text
            assert (sent.json()["url"], sent.json()["status"]) == (receiver.url, "delivered")
            assert len(await asyncio.to_thread(receiver.wait_for, 1)) == 1
