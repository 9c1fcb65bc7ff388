"""The production composition (``running_service``) behind a real uvicorn server, and
``roomscribe`` processes (serve, worker) started as a user starts them."""

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from config import Settings
from roomscribe.service import Running, running_service
from tests.conftest import free_port
from tests.live_helpers import live_engine

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Served:
    service: Running
    port: int

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/listen"


@asynccontextmanager
async def served(settings: Settings, shared_engine: bool = True) -> AsyncIterator[Served]:
    """``shared_engine``: decode with the tests' already loaded live engine in this process
    (fast); False: as ``serve`` does (``live.recognizer_process``)."""
    engine = live_engine() if shared_engine else None
    async with running_service(settings, engine) as service:
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                service.app,
                host="127.0.0.1",
                port=port,
                log_level="warning",
                ws="websockets-sansio",
                lifespan="on",
                timeout_graceful_shutdown=settings.api.shutdown_grace_s,
            )
        )
        task = asyncio.create_task(server.serve())
        try:
            async with asyncio.timeout(30):
                while not server.started:
                    if task.done():
                        task.result()
                    await asyncio.sleep(0.02)
            yield Served(service, port)
        finally:
            server.should_exit = True
            await task


def roomscribe_process(
    command: list[str], env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    """``python -m roomscribe <command>`` with ``env`` added to ours, output into ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "roomscribe", *command],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def wait_http(url: str, within_s: float = 60.0) -> None:
    async with httpx.AsyncClient() as client, asyncio.timeout(within_s):
        while True:
            try:
                if (await client.get(f"{url}/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)


async def jobs_of(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = (await client.get("/v1/transcripts?limit=100")).json()["data"]
    return listed
