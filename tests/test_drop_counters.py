"""/metrics counts what is dropped or refused: outbox, admissions, auth, guard, job failures."""

import asyncio
from pathlib import Path

import httpx

from tests.api_helpers import make_settings
from tests.service_helpers import served


async def _failed(client: httpx.AsyncClient, job_id: str) -> dict[str, str]:
    for _ in range(200):
        body = (await client.get(f"/v1/transcripts/{job_id}")).json()
        if body["status"] == "failed":
            return dict(body["error"])
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} did not fail")


async def test_refusals_and_drops_are_counted(nats_url: str, tmp_path: Path) -> None:
    settings = make_settings(
        nats_url, tmp_path, api={"allow_private_urls": False}, limits={"max_streams": 1}
    )
    async with served(settings) as service, httpx.AsyncClient(base_url=service.http_url) as client:
        empty = await client.post("/v1/transcripts", files={"file": ("e.wav", b"\0")})
        text = await client.post("/v1/transcripts", files={"file": ("t.wav", b"not audio " * 9)})
        assert (await _failed(client, empty.json()["id"]))["code"] == "UNSUPPORTED_FORMAT"
        assert (await _failed(client, text.json()["id"]))["code"] == "UNSUPPORTED_FORMAT"
        forbidden = await client.post(
            "/v1/transcripts", json={"audio_url": "http://100.100.100.200/latest"}
        )
        assert forbidden.status_code == 400
        first = await client.post("/v1/listen/token")
        assert first.status_code == 200
        metrics = (await client.get("/metrics")).text
    assert 'roomscribe_job_failures_total{code="UNSUPPORTED_FORMAT"} 2.0' in metrics
    assert 'roomscribe_requests_refused_total{reason="forbidden_url"} 1.0' in metrics
    assert "roomscribe_publisher_outbox_depth 0.0" in metrics
    assert 'roomscribe_publisher_dropped_total{kind="partial"} 0.0' in metrics
    assert 'roomscribe_publisher_dropped_total{kind="final"} 0.0' in metrics
    assert "roomscribe_webhooks_refused_total 0.0" in metrics
    assert "roomscribe_live_streams_refused_total" in metrics
