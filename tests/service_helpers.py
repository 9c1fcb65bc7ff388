"""The whole ``serve`` composition (bridge, listen, overlay, API) on a real loopback port."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import uvicorn

from config.settings import Settings
from roomscribe.service import Running, running_service
from tests.conftest import free_port


@dataclass
class Served:
    url: str
    running: Running


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[Served]:
    async with running_service(settings) as running:
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                running.app,
                host="127.0.0.1",
                port=port,
                log_level="warning",
                ws="websockets-sansio",
                lifespan="on",
            )
        )
        task = asyncio.create_task(server.serve())
        try:
            async with asyncio.timeout(30):
                while not server.started:
                    if task.done():
                        task.result()
                    await asyncio.sleep(0.02)
            yield Served(f"http://127.0.0.1:{port}", running)
        finally:
            server.should_exit = True
            await task
