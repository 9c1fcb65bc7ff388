"""One outbound guard: public addresses only, the checked address is the one connected to."""

import asyncio
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import nats
import pytest

from config.settings import PostCallSettings
from pipeline.url_fetch import DownloadError, check_url, download, is_public
from pipeline.webhooks import Notifier, WebhookDispatcher
from protocol.webhooks import WebhookEventType
from tests.api_helpers import make_settings, running_api
from tests.bridge_peers import bridge_settings, running_bridge

Answer = Callable[[str, str, bytes], tuple[int, bytes]]


@dataclass
class Upstream:
    url: str
    seen: list[tuple[str, str]] = field(default_factory=list)


@contextmanager
def upstream(answer: Answer) -> Iterator[Upstream]:
    """A local HTTP server answering ``answer(method, path, body)``; records every request."""
    state: Upstream

    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            state.seen.append((self.command, self.path))
            status, payload = answer(self.command, self.path, body)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _reply

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state = Upstream(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def ok(_: str, __: str, ___: bytes) -> tuple[int, bytes]:
    return 200, b"{}"


@pytest.mark.parametrize(
    "address",
    [
        "100.64.0.1",  # carrier-grade NAT
        "100.100.100.200",  # a cloud metadata service inside 100.64.0.0/10
        "169.254.169.254",
        "::ffff:169.254.169.254",  # IPv4-mapped
        "::127.0.0.1",  # IPv4-compatible
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo
        "fd00::1",
        "198.18.0.1",
    ],
)
async def test_internal_addresses_in_every_spelling_are_refused(address: str) -> None:
    assert not is_public(address)
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(DownloadError) as refused:
        await check_url(f"http://{host}/latest/meta-data", allow_private=False)
    assert refused.value.code == "FORBIDDEN_URL"
    assert refused.value.message == f"{address} resolves to non-public address {address}"


def test_public_addresses_pass() -> None:
    for address in ("8.8.8.8", "2606:4700::1", "2002:808:808::1", "64:ff9b::808:808"):
        assert is_public(address), address


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[list[str]]]:
    """Answers for ``*.test`` names, one list per lookup (the last one repeats)."""
    answers: dict[str, list[list[str]]] = {}
    real = socket.getaddrinfo

    def lookup(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".test"):
            queue = answers[host]
            addresses = queue.pop(0) if len(queue) > 1 else queue[0]
            lookups.append(host)
            return [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port or 80)))
                for address in addresses
            ]
        return real(host, port, *args, **kwargs)

    lookups: list[str] = []
    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    answers["lookups"] = lookups  # type: ignore[assignment]
    return answers


async def test_the_checked_address_is_the_one_connected_to(dns: dict[str, Any]) -> None:
    with upstream(ok) as site:
        port = site.url.rsplit(":", 1)[1]
        dns["pinned.test"] = [["127.0.0.1"]]
        body = await download(f"http://pinned.test:{port}/a", 100, 5.0, allow_private=True)
        assert body == b"{}" and site.seen == [("GET", "/a")]
        assert dns["lookups"] == ["pinned.test"]

        # public at the check, loopback a moment later: the connection keeps the first answer
        dns["rebind.test"] = [["8.8.8.8"], ["127.0.0.1"]]
        dns["lookups"].clear()
        with pytest.raises(DownloadError) as failed:
            await download(f"http://rebind.test:{port}/b", 100, 2.0, allow_private=False)
        assert failed.value.code == "DOWNLOAD_FAILED"
        assert site.seen == [("GET", "/a")]
        assert dns["lookups"] == ["rebind.test"]

        dns["cgnat.test"] = [["100.64.1.1"]]
        with pytest.raises(DownloadError) as refused:
            await download(f"http://cgnat.test:{port}/c", 100, 2.0, allow_private=False)
        assert refused.value.code == "FORBIDDEN_URL"


async def _pending(notifier: Notifier, *jobs: str) -> bool:
    deliveries = [d for job in jobs for d in await notifier.deliveries(job)]
    return not deliveries or any(d.status == "pending" for d in deliveries)


async def test_webhook_urls_are_checked_again_at_delivery(
    nats_url: str, tmp_path: Path, dns: dict[str, Any]
) -> None:
    nc = await nats.connect(nats_url)
    try:
        notifier = await Notifier.open(nc, "rs-guard")
        with upstream(ok) as receiver:
            operator_url = f"{receiver.url}/operator"
            settings = PostCallSettings(webhook_url=operator_url, webhook_backoff_s=0.05)
            dispatcher = WebhookDispatcher(notifier, settings, allow_private=False)
            await dispatcher.start()
            try:
                port = receiver.url.rsplit(":", 1)[1]
                dns["hooks.test"] = [["127.0.0.1"]]
                await notifier.notify(
                    "tr_a", WebhookEventType.TRANSCRIPT_DONE, {}, f"http://hooks.test:{port}/caller"
                )
                await notifier.notify("tr_b", WebhookEventType.TRANSCRIPT_DONE, {}, operator_url)
                for _ in range(200):
                    if not await _pending(notifier, "tr_a", "tr_b"):
                        break
                    await asyncio.sleep(0.05)
            finally:
                await dispatcher.stop()
        (refused,) = await notifier.deliveries("tr_a")
        assert refused.status == "failed" and len(refused.attempts) == 1
        assert refused.attempts[0].error == (
            "FORBIDDEN_URL: hooks.test resolves to non-public address 127.0.0.1"
        )
        (delivered,) = await notifier.deliveries("tr_b")
        assert delivered.status == "delivered"
        assert receiver.seen == [("POST", "/operator")]
    finally:
        await nc.close()


async def test_audio_url_in_cgnat_space_is_refused_at_submission(
    nats_url: str, tmp_path: Path, dns: dict[str, Any]
) -> None:
    dns["metadata.test"] = [["100.100.100.200"]]
    settings = make_settings(nats_url, tmp_path, api={"allow_private_urls": False})
    async with running_api(settings) as (client, _):
        refused = await client.post(
            "/v1/transcripts", json={"audio_url": "http://metadata.test/latest"}
        )
        assert refused.status_code == 400
        assert refused.json()["error"] == {
            "code": "FORBIDDEN_URL",
            "message": "audio_url: metadata.test resolves to non-public address 100.100.100.200",
        }
        hooked = await client.post(
            "/v1/transcripts",
            json={"audio_url": "http://8.8.8.8/a.wav", "webhook_url": "http://[2002:7f00:1::]/"},
        )
        assert hooked.status_code == 400 and hooked.json()["error"]["code"] == "FORBIDDEN_URL"
        assert (await client.get("/v1/transcripts")).json()["data"] == []


def _janus(body: bytes) -> Answer:
    def answer(_: str, __: str, ___: bytes) -> tuple[int, bytes]:
        return 200, body

    return answer


@pytest.mark.timeout(120)
async def test_janus_join_is_guarded_bounded_and_never_reflects_upstream(
    tmp_path: Path,
) -> None:
    secret = b'{"janus": "error", "error": {"code": 458, "reason": "db password is hunter2"}}'
    with (
        upstream(_janus(secret)) as refusing,
        upstream(_janus(b'{"janus": "success"}')) as no_data,
        upstream(_janus(b"<html>not json</html>")) as not_json,
        upstream(_janus(b'{"janus": "success", "data": {"id": 1}}')) as storm,
        upstream(ok) as canary,
    ):
        settings = bridge_settings(
            tmp_path,
            janus_urls=[refusing.url, no_data.url, not_json.url, storm.url + "/"],
            janus_join_timeout_s=2.0,
        )
        async with running_bridge(settings) as (_, client, _sink):

            async def join(url: str) -> tuple[int, dict[str, str]]:
                response = await client.post("/v1/janus/join", json={"url": url, "room": 7})
                return response.status_code, response.json()["error"]

            assert await join(canary.url) == (
                400,
                {
                    "code": "FORBIDDEN_URL",
                    "message": "url is not one of the configured bridge.janus_urls",
                },
            )
            assert await join(refusing.url) == (
                502,
                {"code": "PROTOCOL", "message": "Janus: refused create (error 458)"},
            )
            assert await join(no_data.url) == (
                502,
                {"code": "PROTOCOL", "message": "Janus: the create answer has no numeric data.id"},
            )
            assert await join(not_json.url) == (
                502,
                {"code": "PROTOCOL", "message": "Janus: create answer is not JSON"},
            )
            loop = asyncio.get_running_loop()
            started = loop.time()
            status, body = await join(storm.url)
            took = loop.time() - started
            assert (status, body) == (
                504,
                {"code": "UPSTREAM_TIMEOUT", "message": "Janus: room 7 not joined within 2 s"},
            )
            assert 1.9 < took < 4.0
            await asyncio.sleep(1.5)
            assert len(storm.seen) < 15, storm.seen  # create, attach, join, a few polls, destroy
            polls = [path for method, path in storm.seen if method == "GET"]
            assert 1 <= len(polls) <= 4
        assert canary.seen == []

    any_url = bridge_settings(tmp_path, janus_any_url=True)
    with upstream(ok) as canary:
        async with running_bridge(any_url) as (_, client, _sink):
            refused = await client.post("/v1/janus/join", json={"url": canary.url, "room": 1})
            assert refused.status_code == 400
            assert refused.json()["error"] == {
                "code": "FORBIDDEN_URL",
                "message": "url: 127.0.0.1 resolves to non-public address 127.0.0.1",
            }
            bad = await client.post("/v1/janus/join", json={"url": "ftp://x/janus", "room": 1})
            assert bad.status_code == 400 and bad.json()["error"]["code"] == "FORBIDDEN_URL"
        assert canary.seen == []


async def test_callers_ice_servers_pass_the_guard(tmp_path: Path) -> None:
    async with running_bridge(bridge_settings(tmp_path)) as (bridge, client, _sink):
        for url, address in (
            ("stun:127.0.0.1:3478", "127.0.0.1"),
            ("turn:[::1]:3478?transport=udp", "::1"),
            ("turns:100.64.0.9", "100.64.0.9"),
        ):
            refused = await client.post(
                "/v1/sessions",
                json={"room": "r", "sdp": "v=0", "ice_servers": [{"urls": [url]}]},
            )
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"] == {
                "code": "FORBIDDEN_URL",
                "message": f"ice_servers: {address} resolves to non-public address {address}",
            }
        malformed = await client.post(
            "/v1/sessions",
            json={"room": "r", "sdp": "v=0", "ice_servers": [{"urls": "http://stun.example"}]},
        )
        assert (
            malformed.status_code == 400 and malformed.json()["error"]["code"] == "INVALID_REQUEST"
        )
        assert not bridge.peers


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A key and a self-signed certificate for ``pinned.test``."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=pinned.test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


async def test_pinned_https_still_sends_and_verifies_the_host_name(
    self_signed: tuple[Path, Path], dns: dict[str, Any]
) -> None:
    key, cert = self_signed
    names: list[str | None] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda _sock, name, _ctx: names.append(name)  # type: ignore[assignment,misc]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    dns["pinned.test"] = [["127.0.0.1"]]
    try:
        with pytest.raises(DownloadError) as failed:
            await download(f"https://pinned.test:{port}/a", 100, 5.0, allow_private=True)
    finally:
        server.close()
    assert failed.value.code == "DOWNLOAD_FAILED"
    assert "CERTIFICATE_VERIFY_FAILED" in failed.value.message  # self-signed: still verified
    assert names == ["pinned.test"]  # SNI is the host name, not the pinned address
