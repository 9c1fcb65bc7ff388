"""Nothing grows with requests: listings create no JetStream consumers, bodies are bounded."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import nats
import pytest

from pipeline.jobs import JobKind, JobOptions, JobRecord, JobSource, JobState
from protocol.transcript import Transcript
from protocol.webhooks import WebhookEventType
from tests.api_helpers import make_settings, running_api
from tests.service_helpers import served


async def _consumers(nc: nats.NATS) -> int:
    return sum(info.state.consumer_count for info in await nc.jetstream().streams_info())


@pytest.mark.timeout(240)
async def test_listing_logs_and_exports_create_no_consumers(nats_url: str, tmp_path: Path) -> None:
    async with running_api(make_settings(nats_url, tmp_path)) as (client, services):
        store = services.store
        record = JobRecord.queued(JobKind.BATCH, JobSource(type="upload"), JobOptions())
        await store.create(record)
        await store.transition(record.id, JobState.PROCESSING)
        transcript = Transcript(
            id=record.id, model="whisper-tiny.en", language="en", duration=1.0, segments=[]
        )
        await store.put_transcript(record.id, transcript)
        await store.put_file(record.id, "transcript.txt", b"hello\n" * 50_000)
        await store.transition(record.id, JobState.COMPLETED, results=["transcript.txt"])
        await services.notifier.notify(record.id, WebhookEventType.TRANSCRIPT_DONE, {}, None)
        before = await _consumers(services.nc)
        for i in range(1_100):
            listed = await client.get("/v1/transcripts")
            assert listed.status_code == 200, (i, listed.text)
            assert [job["id"] for job in listed.json()["data"]] == [record.id]
            log = await client.get(f"/v1/transcripts/{record.id}/webhooks")
            assert log.status_code == 200, (i, log.text)
            assert [d["status"] for d in log.json()["data"]] == ["no_url"]
        for _ in range(50):
            exported = await client.get(f"/v1/transcripts/{record.id}.txt")
            assert exported.status_code == 200 and exported.content == b"hello\n" * 50_000
            assert (await client.get(f"/v1/transcripts/{record.id}")).status_code == 200
        assert await _consumers(services.nc) == before
        assert (await client.delete(f"/v1/transcripts/{record.id}")).status_code == 204
        assert await store.file_names(record.id) == []
        assert (await client.get(f"/v1/transcripts/{record.id}/webhooks")).status_code == 404
        assert (await client.get("/v1/transcripts")).json()["data"] == []
        assert await _consumers(services.nc) == before


async def _raw(port: int, head: bytes, body: bytes = b"", wait_s: float = 10.0) -> bytes:
    """Send ``head`` and ``body`` on one socket; what comes back before it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + body)
    await writer.drain()
    try:
        async with asyncio.timeout(wait_s):
            return await reader.read(65536)
    finally:
        writer.close()


@pytest.mark.timeout(120)
async def test_json_bodies_are_capped_and_must_arrive_in_time(
    nats_url: str, tmp_path: Path
) -> None:
    settings = make_settings(
        nats_url,
        tmp_path,
        api={
            "max_json_kb": 64,
            "body_timeout_s": 1.0,
            "max_upload_mb": 1,
            "upload_idle_timeout_s": 1.0,
        },
        postcall={"run_worker": False},
    )
    async with served(settings) as service, httpx.AsyncClient(base_url=service.http_url) as client:
        port = int(service.http_url.rsplit(":", 1)[1])
        started = time.monotonic()
        answer = await _raw(
            port,
            b"POST /v1/transcripts HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: 2000000000\r\n\r\n",
            b"{",
        )
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b'"code":"TOO_LARGE"' in answer
        assert time.monotonic() - started < 2

        big = json.dumps({"audio_url": "http://example.com/a.wav", "language": "x" * 100_000})

        async def pieces() -> AsyncIterator[bytes]:
            for i in range(0, len(big), 1000):
                yield big[i : i + 1000].encode()

        chunked = await client.post(
            "/v1/transcripts", content=pieces(), headers={"Content-Type": "application/json"}
        )
        assert chunked.status_code == 413
        assert chunked.json()["error"] == {
            "code": "TOO_LARGE",
            "message": "request body is larger than 65536 bytes",
        }
        for path in ("/v1/sessions", "/v1/janus/join", "/whip/room/alice"):
            kind = "application/sdp" if path.startswith("/whip") else "application/json"
            refused = await client.post(path, content=b"x" * 70_000, headers={"Content-Type": kind})
            assert refused.status_code == 413, (path, refused.text)
            assert refused.json()["error"]["code"] == "TOO_LARGE", path

        started = time.monotonic()
        slow = await _raw(
            port,
            b"POST /v1/transcripts HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n",
            b'{"audio_url": ',
        )
        assert slow.startswith(b"HTTP/1.1 408"), slow[:200]
        assert b'"code":"REQUEST_TIMEOUT"' in slow
        assert 0.9 < time.monotonic() - started < 5

        started = time.monotonic()
        stalled = await _raw(
            port,
            b"POST /v1/transcripts HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 500000\r\n\r\n",
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
            + b"\0" * 1000,
        )
        assert stalled.startswith(b"HTTP/1.1 408"), stalled[:200]
        assert b'"code":"REQUEST_TIMEOUT"' in stalled
        assert 0.9 < time.monotonic() - started < 5

        upload = await client.post(
            "/v1/transcripts", files={"file": ("a.wav", b"\0" * (1024 * 1024 + 100_000))}
        )
        assert upload.status_code == 413 and upload.json()["error"]["code"] == "TOO_LARGE"
        assert (await client.get("/health")).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'roomscribe_requests_refused_total{reason="body_too_large"}' in metrics
        assert 'roomscribe_requests_refused_total{reason="body_timeout"} 2.0' in metrics
