import asyncio
import json
import shlex
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import nats
import pytest
import uvicorn
from fastapi import FastAPI
from nats.aio.msg import Msg

from api.auth import AccessPolicy, AuthMiddleware
from api.errors import install_error_handlers
from api.metrics import ApiMetrics
from api.overlay import overlay_router
from api.overlay_credentials import OverlayCredentials
from config.settings import load_settings
from pipeline.nats_server import EmbeddedNats
from protocol import CaptionFrame, Subjects, Word, encode_token
from tests.browser import chromium_binary, open_page
from tests.conftest import free_port

WEB = Path(__file__).resolve().parent.parent / "web"
LINES = """[...document.querySelectorAll('#captions .line')].map(l => ({
  who: l.querySelector('.who').textContent, text: l.querySelector('.text').textContent,
  final: l.classList.contains('final')}))"""


def overlay_app(
    nats_websocket_url: str | None,
    prefix: str = "roomscribe",
    credentials: OverlayCredentials | None = None,
    api_keys: list[str] | None = None,
) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    settings = load_settings(nats={"subject_prefix": prefix}, api={"api_keys": api_keys or []})
    policy = AccessPolicy(settings.api.api_keys, settings.api.public_paths)
    app.add_middleware(AuthMiddleware, policy=policy, metrics=ApiMetrics())
    app.include_router(overlay_router(settings, nats_websocket_url, credentials))
    return app


@asynccontextmanager
async def scoped_nats(
    data_dir: Path, ttl_s: float = 3600
) -> AsyncIterator[tuple[EmbeddedNats, OverlayCredentials]]:
    """The embedded server with overlay users, as the service runs it."""
    credentials = OverlayCredentials.for_data_dir(data_dir, Subjects(), ttl_s)
    credentials.write()
    async with EmbeddedNats(data_dir, include=OverlayCredentials.FILE) as server:
        credentials.attach(server)
        try:
            yield server, credentials
        finally:
            await credentials.aclose()


async def test_page_and_bundle_are_served() -> None:
    app = overlay_app("ws://127.0.0.1:4223/</script><script>alert(1)</script>", prefix="acme.tv")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        page = await c.get("/overlay", params={"room": "standup"})
        script = await c.get("/overlay/overlay.js")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="overlay/overlay.js">' in page.text
    config_text = page.text.split('type="application/json">', 1)[1].split("</script>", 1)[0]
    config = json.loads(config_text)
    assert config == {
        "natsUrl": "ws://127.0.0.1:4223/</script><script>alert(1)</script>",
        "prefix": "acme.tv",
    }
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.content == (WEB / "static" / "overlay.js").read_bytes()
    assert b".v1.captions." in script.content


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_js_subject_tokens_match_python() -> None:
    ids = ["standup", "team.eu", "Zoë Li", "*", ">", "~", "中文", "a b/c\\d", "emoji 🎉", "A-z_09"]
    script = (
        "import { encodeToken } from './src/subjects.js';"
        f"console.log(JSON.stringify({json.dumps(ids)}.map(encodeToken)));"
    )
    out = subprocess.run(
        ["node", "--input-type=module", "-e", script],
        cwd=WEB,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out) == [encode_token(i) for i in ids]


@pytest.mark.skipif(
    not (WEB / "node_modules" / ".bin" / "esbuild").exists(),
    reason="web/node_modules is not installed (npm ci in web/)",
)
def test_committed_bundle_is_built_from_the_sources(tmp_path: Path) -> None:
    script = json.loads((WEB / "package.json").read_text())["scripts"]["build"]
    args = [a for a in shlex.split(script) if not a.startswith("--outfile=")]
    out = tmp_path / "overlay.js"
    subprocess.run(
        [str(WEB / "node_modules" / ".bin" / args[0]), *args[1:], f"--outfile={out}"],
        cwd=WEB,
        capture_output=True,
        check=True,
    )
    assert out.read_bytes() == (WEB / "static" / "overlay.js").read_bytes(), "run npm run build"


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(750):
            if server.started:
                break
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def caption(kind: str, segment: str, rev: int, text: str, room: str = "team.eu") -> CaptionFrame:
    words = [Word(word=w, start=rev, end=rev + 0.3, confidence=0.9) for w in text.split()]
    return CaptionFrame(
        type=kind,  # type: ignore[arg-type]
        room=room,
        participant="zoe",
        name="Zoë Li",
        segment_id=segment,
        rev=rev,
        seq=rev,
        start=0.0,
        end=2.0,
        text=text,
        words=words if kind == "final" else [],
        model="test",
        stable_chars=5 if kind == "partial" else 0,
    )


@pytest.mark.skipif(chromium_binary() is None, reason="Debian chromium is not installed")
async def test_overlay_in_chromium_shows_speaker_and_final_text(tmp_path: Path) -> None:
    subjects = Subjects()
    async with (
        scoped_nats(tmp_path) as (server, credentials),
        serve(overlay_app(server.websocket_url, credentials=credentials)) as base,
    ):
        nc = await nats.connect(server.url)
        try:
            async with httpx.AsyncClient(base_url=base) as client:
                issued = (await client.post("/v1/rooms/team.eu/overlay-token")).json()
            url = f"{base}{issued['overlay_url']}&lines=3&font=40&position=bottom"
            async with (
                open_page(chromium_binary() or "", f"{base}/overlay?room=team.eu") as anonymous,
                open_page(chromium_binary() or "", url) as page,
            ):
                await anonymous.wait_for("document.body && document.body.dataset.state === 'error'")
                status = await anonymous.evaluate("document.getElementById('status').textContent")
                assert "captions stopped" in status, status
                state = "document.body && document.body.dataset.state === 'connected'"
                await page.wait_for(state)

                async def publish(frame: CaptionFrame) -> None:
                    subject = subjects.captions(frame.room, frame.participant)
                    await nc.publish(subject, frame.model_dump_json().encode())
                    await nc.flush()

                await publish(caption("partial", "s1", 0, "hello wor"))
                await publish(caption("partial", "s1", 1, "hello world this"))
                await publish(caption("partial", "s1", 0, "hello wor"))  # older revision
                await publish(caption("final", "other", 3, "wrong room", room="team"))
                lines = await page.wait_for(
                    f"(() => {{ const l = {LINES}; return l.length && l[0].text === 'hello world this' && l; }})()"
                )
                assert lines == [{"who": "Zoë Li", "text": "hello world this", "final": False}]

                await publish(caption("final", "s1", 2, "Hello world, this is Zoë."))
                await publish(caption("partial", "s1", 1, "hello world this"))  # late duplicate
                await publish(caption("final", "s2", 0, "Second line."))
                await publish(caption("partial", "s3", 0, "third"))
                await publish(caption("final", "s3", 1, ""))  # noise: the line goes away
                lines = await page.wait_for(
                    f"(() => {{ const l = {LINES}; return l.length === 2 && l; }})()"
                )
                await asyncio.sleep(0.3)
                lines = await page.evaluate(LINES)
                assert lines == [
                    {"who": "Zoë Li", "text": "Hello world, this is Zoë.", "final": True},
                    {"who": "Zoë Li", "text": "Second line.", "final": True},
                ]
                await publish(caption("final", "s4", 0, "Fourth."))
                await publish(caption("final", "s5", 0, "Fifth."))
                texts = await page.wait_for(
                    f"(() => {{ const l = {LINES}.map(x => x.text); return l.includes('Fifth.') && l; }})()"
                )
                assert texts == ["Second line.", "Fourth.", "Fifth."]
                style = await page.evaluate(
                    "getComputedStyle(document.querySelector('.line')).fontSize"
                )
                assert style == "40px"
        finally:
            await nc.close()
    assert encode_token("team.eu") == "team~2Eeu"


async def test_overlay_tokens_are_read_only_scoped_to_one_room_and_expire(tmp_path: Path) -> None:
    subjects = Subjects()
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    async with scoped_nats(tmp_path, ttl_s=4) as (server, credentials):
        app = overlay_app(server.websocket_url, credentials=credentials, api_keys=["k"])
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.post("/v1/rooms/team.eu/overlay-token")).status_code == 401
            bearer = {"Authorization": "Bearer k"}
            response = await client.post("/v1/rooms/team.eu/overlay-token", headers=bearer)
            too_long = await client.post(f"/v1/rooms/{'x' * 300}/overlay-token", headers=bearer)
        assert response.status_code == 200, response.text
        assert too_long.status_code == 400
        issued = response.json()
        assert issued["subject"] == "roomscribe.v1.captions.team~2Eeu.>"
        assert issued["nats_url"] == server.websocket_url

        service = await nats.connect(server.url)  # the service itself: no credentials
        await service.jetstream().account_info()
        with pytest.raises(Exception, match="Authorization"):
            await nats.connect(server.websocket_url, allow_reconnect=False, error_cb=on_error)
        closed = asyncio.Event()

        async def on_closed() -> None:
            closed.set()

        overlay = await nats.connect(
            server.websocket_url,
            user=issued["user"],
            password=issued["password"],
            allow_reconnect=False,
            error_cb=on_error,
            closed_cb=on_closed,
        )
        got: list[str] = []

        async def collect(msg: Msg) -> None:
            got.append(msg.subject)

        await overlay.subscribe(subjects.room_captions("team.eu"), cb=collect)
        await overlay.subscribe(subjects.room_captions("team"), cb=collect)
        await overlay.publish(subjects.captions("team.eu", "mallory"), b"{}")
        await overlay.flush()
        await service.publish(subjects.captions("team.eu", "zoe"), b"{}")
        await service.publish(subjects.captions("team", "zoe"), b"{}")
        await service.flush()
        await asyncio.sleep(0.3)
        assert got == [subjects.captions("team.eu", "zoe")]
        messages = " ".join(str(e) for e in errors)
        assert "permissions violation for subscription" in messages
        assert "permissions violation for publish" in messages

        async with asyncio.timeout(10):
            await closed.wait()  # expired: the reload disconnected it
        with pytest.raises(Exception, match="Authorization"):
            await nats.connect(
                server.websocket_url,
                user=issued["user"],
                password=issued["password"],
                allow_reconnect=False,
                error_cb=on_error,
            )
        assert credentials.users == []
        await service.close()


async def test_overlay_tokens_are_capped_until_one_expires(tmp_path: Path) -> None:
    async with scoped_nats(tmp_path, ttl_s=2) as (server, credentials):
        credentials.max_users = 2
        app = overlay_app(server.websocket_url, credentials=credentials)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as c:
            issued = [await c.post(f"/v1/rooms/r{i}/overlay-token") for i in range(3)]
            assert [r.status_code for r in issued] == [200, 200, 429]
            assert issued[2].json()["error"] == {
                "code": "CAPACITY",
                "message": "2 overlay tokens are live; wait for one to expire",
            }
            assert len(credentials.users) == 2
            await asyncio.sleep(2.5)
            assert credentials.users == []
            assert (await c.post("/v1/rooms/r3/overlay-token")).status_code == 200


async def test_overlay_token_needs_the_embedded_server() -> None:
    app = overlay_app("ws://nats.example:443", credentials=None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.post("/v1/rooms/standup/overlay-token")
    assert response.status_code == 404
    assert "embedded NATS" in response.json()["error"]["message"]
