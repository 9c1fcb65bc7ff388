"""Running the real API app (worker included) against a real nats-server, in-process."""

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import jiwer
import nats

from api.app import create_app
from api.services import Services
from config.settings import Settings, load_settings


def make_settings(nats_url: str, data_dir: Path, **sections: dict[str, Any]) -> Settings:
    base: dict[str, Any] = {
        "data_dir": str(data_dir),
        "nats": {"url": nats_url, "subject_prefix": f"t{uuid.uuid4().hex[:8]}"},
        "api": {"allow_private_urls": True},
        "postcall": {
            "batch_model": "whisper-tiny.en",
            "model": "whisper-tiny.en",
            "webhook_secret": "test-secret",
            "webhook_backoff_s": 0.1,
            "webhook_backoff_max_s": 0.5,
            "summarize": False,
        },
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return load_settings(**base)


@asynccontextmanager
async def running_api(
    settings: Settings, runtime: Any | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    nc = await nats.connect(settings.nats.url)
    try:
        services = await Services.open(settings, nc, runtime=runtime, run_worker=True)
        app = create_app(services)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://api", timeout=30
            ) as client:
                yield client, services
    finally:
        await nc.close()


async def wait_done(
    client: httpx.AsyncClient, job_id: str, limit_s: float = 120.0
) -> dict[str, Any]:
    async with asyncio.timeout(limit_s):
        while True:
            response = await client.get(f"/v1/transcripts/{job_id}")
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            if body["status"] in ("completed", "failed"):
                return body
            await asyncio.sleep(0.2)


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def wer(reference: str, hypothesis: str) -> float:
    return float(jiwer.wer(normalize(reference), normalize(hypothesis)))
