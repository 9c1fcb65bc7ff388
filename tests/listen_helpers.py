"""A real uvicorn server with ``/v1/listen`` on a free port, and a WebSocket client for it."""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import nats
import numpy as np
from nats.aio.client import Client as NatsClient
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from api.services import Services
from pipeline.call import Admission
from pipeline.runtime import LiveRuntime
from tests.api_helpers import make_settings
from tests.service_helpers import served


@dataclass
class ListenServer:
    port: int
    services: Services
    runtime: LiveRuntime
    admission: Admission
    nc: NatsClient

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/listen"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@asynccontextmanager
async def listen_server(
    nats_url: str, data_dir: Path, shared_engine: bool = True, **sections: dict[str, Any]
) -> AsyncIterator[ListenServer]:
    """The production composition (``running_service``) behind a real uvicorn server; the
    in-process worker only runs when ``postcall={"run_worker": True}`` is given;
    ``shared_engine`` as in :func:`tests.service_helpers.served`."""
    sections = {**sections, "postcall": {"run_worker": False, **sections.get("postcall", {})}}
    settings = make_settings(nats_url, data_dir, **sections)
    async with served(settings, shared_engine) as running:
        nc = await nats.connect(nats_url)
        try:
            service = running.service
            admission = service.runtime.admission
            assert isinstance(admission, Admission)
            yield ListenServer(running.port, service.services, service.runtime, admission, nc)
        finally:
            await nc.close()


def to_48k_stereo(samples: np.ndarray) -> bytes:
    """16 kHz mono int16 -> 48 kHz interleaved stereo s16le, resampled with PyAV."""
    resampler = av.AudioResampler(format="s16", layout="stereo", rate=48000)
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 16000
    out = [
        f.to_ndarray().reshape(-1) for f in [*resampler.resample(frame), *resampler.resample(None)]
    ]
    return np.concatenate(out).astype("<i2").tobytes()


def chunks(data: bytes, sizes: Iterable[int]) -> list[bytes]:
    """``data`` cut into pieces of the given sizes, cycled (odd sizes split samples)."""
    sizes = list(sizes)
    pieces, at, i = [], 0, 0
    while at < len(data):
        pieces.append(data[at : at + sizes[i % len(sizes)]])
        at += sizes[i % len(sizes)]
        i += 1
    return pieces


@dataclass
class Session:
    """What one WebSocket session received, and how it was closed."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    @property
    def error(self) -> dict[str, Any]:
        errors = self.of("error")
        assert len(errors) == 1, self.messages
        return errors[0]


async def receive_all(ws: ClientConnection, session: Session) -> Session:
    try:
        async for message in ws:
            assert isinstance(message, str), "the server sends text frames only"
            session.messages.append(json.loads(message))
    except ConnectionClosed:
        pass
    session.close_code = ws.close_code
    return session


async def run_session(
    url: str,
    start: dict[str, Any] | str | bytes | None,
    audio: Sequence[bytes] = (),
    *,
    pace_s: float = 0.0,
    end: dict[str, Any] | None = None,
    within_s: float = 120.0,
) -> Session:
    """Open, send ``start`` then ``audio`` (``pace_s`` between pieces) then ``end``, and read
    everything the server sends until it closes."""
    session = Session()
    async with asyncio.timeout(within_s), connect(url, max_size=None) as ws:
        reader = asyncio.create_task(receive_all(ws, session))
        try:
            if start is not None:
                await ws.send(json.dumps(start) if isinstance(start, dict) else start)
            for piece in audio:
                await ws.send(piece)
                await asyncio.sleep(pace_s)
            if end is not None:
                await ws.send(json.dumps(end))
        except ConnectionClosed:
            pass
        await reader
    return session


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool], within_s: float = 30.0
) -> None:
    """Poll ``check`` (sync or async) until it is true."""
    deadline = time.monotonic() + within_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)
