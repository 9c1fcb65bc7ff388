"""``api.cors_origins``: browser pages on other origins call the REST API and publish over WHIP.

The production composition (``running_service``) behind uvicorn; the browser checks run Debian
Chromium on a page served from another port (another origin), with web security on."""

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import nats
import pytest
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from config import Settings, load_settings
from protocol import CaptionFrame, Subjects
from tests.bridge_peers import assert_captions, host_address
from tests.browser import chromium_binary, open_page
from tests.conftest import LIBRIVOX, free_port, librivox_reference
from tests.service_helpers import Served, served

KEY = "cors-test-key"
PAGE_ORIGIN_HOST = "127.0.0.1"
CLIP = "sense_and_sensibility_01_austen_64kb-0880"

# Web Audio plays the clip once into the published track, so the captions are of one reading
PAGE = """<!doctype html><html><body><script>
const params = new URLSearchParams(location.search);
const base = params.get("base"), key = params.get("key");
const auth = {"Authorization": "Bearer " + key};
window.result = {};
async function publish() {
  const ctx = new AudioContext({sampleRate: 48000});
  const clip = await ctx.decodeAudioData(await (await fetch("/clip.wav")).arrayBuffer());
  const source = ctx.createBufferSource();
  source.buffer = clip;
  const out = ctx.createMediaStreamDestination();
  source.connect(out);
  const pc = new RTCPeerConnection();
  pc.addTrack(out.stream.getAudioTracks()[0], out.stream);
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(done => {
    if (pc.iceGatheringState === "complete") return done();
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") done();
    });
  });
  const answer = await fetch(base + "/whip/cors-room/alice?name=Alice", {
    method: "POST", headers: {...auth, "Content-Type": "application/sdp"},
    body: pc.localDescription.sdp});
  window.result.status = answer.status;
  window.result.location = answer.headers.get("Location");
  window.result.etag = answer.headers.get("ETag");
  await pc.setRemoteDescription({type: "answer", sdp: await answer.text()});
  await new Promise(done => pc.addEventListener("connectionstatechange", () => {
    if (pc.connectionState === "connected") done();
  }));
  source.start();
  await new Promise(done => { source.onended = done; });
  await new Promise(done => setTimeout(done, 1500));
  window.result.deleted = (await fetch(new URL(window.result.location, base),
    {method: "DELETE", headers: auth})).status;
  const listed = await fetch(base + "/v1/transcripts", {headers: auth});
  window.result.listed = {status: listed.status, body: await listed.json()};
}
publish().then(() => { window.result.done = true; },
               e => { window.result.error = String(e); window.result.done = true; });
</script></body></html>"""

BROWSER_FLAGS = (
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
)


def cors_settings(tmp_path: Path, origins: list[str]) -> Settings:
    return load_settings(
        data_dir=tmp_path,
        api={"api_keys": [KEY], "cors_origins": origins},
        bridge={"host_addresses": [host_address()]},
    )


@asynccontextmanager
async def page_server() -> AsyncIterator[str]:
    """The page's own origin: another port than the service's."""
    import uvicorn

    app = FastAPI()

    @app.get("/page.html")
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/clip.wav")
    async def clip() -> object:
        from fastapi.responses import FileResponse

        return FileResponse(LIBRIVOX / f"{CLIP}.wav", media_type="audio/wav")

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host=PAGE_ORIGIN_HOST, port=port, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        yield f"http://{PAGE_ORIGIN_HOST}:{port}"
    finally:
        server.should_exit = True
        await task


async def preflight(client: httpx.AsyncClient, path: str, origin: str) -> httpx.Response:
    return await client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


async def test_cors_headers_on_preflight_success_and_errors(tmp_path: Path) -> None:
    origin = "https://meet.example.org"
    async with served(cors_settings(tmp_path, [origin])) as service:

        @service.service.app.get("/test-crash", include_in_schema=False)
        async def crash() -> None:
            raise RuntimeError("handler bug")

        async with httpx.AsyncClient(base_url=service.http_url) as client:
            # answered before auth: a browser never sends the key on a preflight
            answer = await preflight(client, "/v1/transcripts", origin)
            assert answer.status_code == 204
            assert answer.headers["access-control-allow-origin"] == origin
            assert answer.headers["access-control-allow-headers"] == "authorization, content-type"
            assert "POST" in answer.headers["access-control-allow-methods"]
            assert "accept-post" not in answer.headers

            whip = await preflight(client, "/whip/room-1/alice", origin)
            assert whip.status_code == 204
            assert whip.headers["accept-post"] == "application/sdp"
            for exposed in ("Location", "ETag", "Link"):
                assert exposed in whip.headers["access-control-expose-headers"]
            session = await preflight(client, "/whip/sessions/abc", origin)
            assert "accept-post" not in session.headers

            # errors carry the headers too, with the one error body
            refused = await client.get("/v1/transcripts", headers={"Origin": origin})
            assert refused.status_code == 401
            assert refused.headers["access-control-allow-origin"] == origin
            assert refused.json()["error"]["code"] == "UNAUTHORIZED"
            crashed = await client.get(
                "/test-crash", headers={"Origin": origin, "Authorization": f"Bearer {KEY}"}
            )
            assert crashed.status_code == 500
            assert crashed.headers["access-control-allow-origin"] == origin
            assert crashed.json()["error"]["code"] == "INTERNAL"
            listed = await client.get(
                "/v1/transcripts", headers={"Origin": origin, "Authorization": f"Bearer {KEY}"}
            )
            assert listed.status_code == 200
            assert listed.headers["access-control-allow-origin"] == origin
            assert "Origin" in listed.headers["vary"]

            # an origin that is not listed gets nothing a browser would accept
            other = await preflight(client, "/v1/transcripts", "https://evil.example")
            assert "access-control-allow-origin" not in other.headers
            assert other.status_code == 401
            plain = await client.get("/health", headers={"Origin": "https://evil.example"})
            assert plain.status_code == 200
            assert "access-control-allow-origin" not in plain.headers


async def test_cors_is_off_by_default_and_star_allows_any(tmp_path: Path) -> None:
    async with (
        served(load_settings(data_dir=tmp_path / "off")) as service,
        httpx.AsyncClient(base_url=service.http_url) as client,
    ):
        answer = await preflight(client, "/v1/transcripts", "https://meet.example.org")
        assert "access-control-allow-origin" not in answer.headers
        health = await client.get("/health", headers={"Origin": "https://meet.example.org"})
        assert "access-control-allow-origin" not in health.headers
    async with (
        served(cors_settings(tmp_path / "star", ["*"])) as service,
        httpx.AsyncClient(base_url=service.http_url) as client,
    ):
        answer = await preflight(client, "/whip/r/p", "https://anywhere.example")
        assert answer.status_code == 204
        assert answer.headers["access-control-allow-origin"] == "*"


def test_cors_origins_setting_reads_from_toml(tmp_path: Path) -> None:
    config = tmp_path / "roomscribe.toml"
    config.write_text('[api]\ncors_origins = ["https://meet.example.org", "*"]\n')
    settings = load_settings(config)
    assert settings.api.cors_origins == ["https://meet.example.org", "*"]


async def run_page(service: Served, page_base: str) -> dict[str, object]:
    url = f"{page_base}/page.html?base={service.http_url}&key={KEY}"
    async with open_page(chromium_binary() or "", url, BROWSER_FLAGS) as page:
        result: dict[str, object] = await page.wait_for(
            "window.result && window.result.done && window.result", within_s=90
        )
        return result


@pytest.mark.skipif(chromium_binary() is None, reason="Debian chromium is not installed")
async def test_page_on_another_origin_publishes_over_whip_and_lists_transcripts(
    tmp_path: Path,
) -> None:
    async with page_server() as page_base:
        async with served(cors_settings(tmp_path, [page_base])) as service:
            nc = await nats.connect(service.service.settings.nats.url)
            finals: list[CaptionFrame] = []

            async def collect(msg: nats.aio.msg.Msg) -> None:
                frame = json.loads(msg.data)
                if frame.get("type") == "final" and frame.get("text", "").strip():
                    finals.append(CaptionFrame.model_validate(frame))

            await nc.subscribe(Subjects().room_captions("cors-room"), cb=collect)
            try:
                result = await run_page(service, page_base)
            finally:
                await nc.drain()
            async with httpx.AsyncClient(base_url=service.http_url) as client:
                calls = (
                    await client.get("/v1/calls", headers={"Authorization": f"Bearer {KEY}"})
                ).json()["data"]
        assert "error" not in result, result
        assert result["status"] == 201, result
        assert str(result["location"]).startswith("/whip/sessions/"), result
        assert result["etag"], result
        assert result["deleted"] == 200, result
        listed = result["listed"]
        assert isinstance(listed, dict) and listed["status"] == 200, listed
        assert "data" in listed["body"], listed
        assert [c["room"] for c in calls] == ["cors-room"], calls
        assert calls[0]["state"] in ("ended", "handed_over"), calls
        heard = " ".join(f.text for f in finals if f.participant == "alice")
        assert_captions({"alice": librivox_reference()[CLIP]}, {"alice": heard})


@pytest.mark.skipif(chromium_binary() is None, reason="Debian chromium is not installed")
async def test_page_on_an_origin_not_listed_is_blocked_by_the_browser(tmp_path: Path) -> None:
    async with page_server() as page_base:
        allowed = ["https://meet.example.org"]
        async with served(cors_settings(tmp_path, allowed)) as service:
            result = await run_page(service, page_base)
            assert "Failed to fetch" in str(result.get("error")), result
            async with httpx.AsyncClient(base_url=service.http_url) as client:
                calls = await client.get("/v1/calls", headers={"Authorization": f"Bearer {KEY}"})
            assert calls.json()["data"] == [], calls.text
