"""A real Janus (Debian package) with its own config folder: HTTP API and one VideoRoom room."""

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from sfu_bridge.janus import JanusClient, plugin_data
from tests.bridge_peers import SpeechTrack, answer, client_peer, offer_for

JANUS = Path("/usr/bin/janus")
LIBDIR = Path("/usr/lib/x86_64-linux-gnu/janus")
ROOM = 1234
_KEEP = {"plugins": {"libjanus_videoroom.so"}, "transports": {"libjanus_http.so"}}


def _disabled(kind: str) -> str:
    return ",".join(
        sorted(p.name for p in (LIBDIR / kind).glob("*.so") if p.name not in _KEEP.get(kind, set()))
    )


def write_config(folder: Path, port: int, host: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "janus.jcfg").write_text(
        f"""general: {{
    configs_folder = "{folder}"
    plugins_folder = "{LIBDIR / "plugins"}"
    transports_folder = "{LIBDIR / "transports"}"
    events_folder = "{LIBDIR / "events"}"
    loggers_folder = "{LIBDIR / "loggers"}"
    debug_level = 3
    session_timeout = 60
}}
media: {{
    rtp_port_range = "20000-40000"
}}
nat: {{
    ice_enforce_list = "{host}"
}}
plugins: {{
    disable = "{_disabled("plugins")}"
}}
transports: {{
    disable = "{_disabled("transports")}"
}}
loggers: {{
    disable = "{_disabled("loggers")}"
}}
events: {{
    broadcast = false
    disable = "{_disabled("events")}"
}}
"""
    )
    (folder / "janus.transport.http.jcfg").write_text(
        f"""general: {{
    base_path = "/janus"
    http = true
    port = {port}
    ip = "127.0.0.1"
    https = false
}}
admin: {{
    admin_http = false
}}
"""
    )
    (folder / "janus.plugin.videoroom.jcfg").write_text(
        f"""general: {{
}}
room-{ROOM}: {{
    description = "roomscribe test room"
    publishers = 10
    audiocodec = "opus"
    videocodec = "vp8"
}}
"""
    )


@dataclass
class JanusServer:
    url: str
    room: int
    proc: subprocess.Popen[bytes]


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_janus(folder: Path, host: str) -> JanusServer:
    if not JANUS.exists() or not os.access(JANUS, os.X_OK):
        pytest.skip("Janus is not installed (/usr/bin/janus): apt-get install janus")
    port = free_tcp_port()
    write_config(folder, port, host)
    log = open(folder / "janus.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [str(JANUS), "-C", str(folder / "janus.jcfg"), "-F", str(folder)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"janus exited: {(folder / 'janus.log').read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return JanusServer(f"http://127.0.0.1:{port}/janus", ROOM, proc)
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("janus did not open its HTTP port")


def stop_janus(server: JanusServer) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(5)


class JanusPublisher:
    """A real aiortc peer publishing one Opus audio track into a VideoRoom room."""

    def __init__(self, server: JanusServer, display: str, track: SpeechTrack) -> None:
        self.server = server
        self.display = display
        self.track = track
        self.client = JanusClient(server.url)
        self.pc = client_peer()
        self.handle = 0
        self.feed = 0

    async def join(self) -> None:
        await self.client.create()
        self.handle = await self.client.attach()
        joined = await self.client.send(
            self.handle,
            {
                "request": "join",
                "ptype": "publisher",
                "room": self.server.room,
                "display": self.display,
            },
        )
        self.feed = int(plugin_data(joined)["id"])
        self.pc.addTransceiver(self.track, direction="sendonly")
        offer = await offer_for(self.pc)
        configured = await self.client.send(
            self.handle,
            {"request": "configure", "audio": True, "video": False},
            {"type": "offer", "sdp": offer},
        )
        await answer(self.pc, configured["jsep"]["sdp"])

    async def leave(self) -> None:
        await self.client.request(self.handle, {"request": "leave"})
        await self.pc.close()
        await self.client.aclose()
