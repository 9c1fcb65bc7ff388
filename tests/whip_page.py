"""A page on its own origin that publishes one LibriVox clip over WHIP from headless Chromium
(Web Audio plays the clip once into the track, then silence), ends the session and lists
transcripts; ``window.result`` tells the test what the browser saw."""

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats
import uvicorn
from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse
from nats.aio.msg import Msg

from protocol import CaptionFrame, Subjects
from tests.browser import chromium_binary, open_page
from tests.conftest import LIBRIVOX, free_port

PAGE_HOST = "127.0.0.1"
CLIP = "sense_and_sensibility_01_austen_64kb-0880"

# Web Audio plays the clip once into the published track, so the captions are of one reading
ROOM = "cors-room"  # the page publishes alice into this room

PAGE = """<!doctype html><html><body><script>
const params = new URLSearchParams(location.search);
const base = params.get("base"), key = params.get("key");
const auth = {"Authorization": "Bearer " + key};
window.result = {};
async function publish() {
  let track, play, ended;
  if (params.get("mic")) {
    // Chromium's fake capture device plays the file Chromium was started with, as a microphone
    const stream = await navigator.mediaDevices.getUserMedia({audio: {
      echoCancellation: false, noiseSuppression: false, autoGainControl: false}});
    track = stream.getAudioTracks()[0];
    play = () => {};
    ended = new Promise(done => setTimeout(done, Number(params.get("mic"))));
  } else {
    const ctx = new AudioContext({sampleRate: 48000});
    const clip = await ctx.decodeAudioData(await (await fetch("/clip.wav")).arrayBuffer());
    const source = ctx.createBufferSource();
    source.buffer = clip;
    const out = ctx.createMediaStreamDestination();
    source.connect(out);
    track = out.stream.getAudioTracks()[0];
    play = () => source.start();
    ended = new Promise(done => { source.onended = done; });
  }
  const pc = new RTCPeerConnection();
  pc.addTrack(track);
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(done => {
    if (pc.iceGatheringState === "complete") return done();
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") done();
    });
  });
  const answer = await fetch(base + "/whip/__ROOM__/alice?name=Alice", {
    method: "POST", headers: {...auth, "Content-Type": "application/sdp"},
    body: pc.localDescription.sdp});
  window.result.status = answer.status;
  window.result.location = answer.headers.get("Location");
  window.result.etag = answer.headers.get("ETag");
  await pc.setRemoteDescription({type: "answer", sdp: await answer.text()});
  await new Promise(done => pc.addEventListener("connectionstatechange", () => {
    if (pc.connectionState === "connected") done();
  }));
  play();
  await ended;
  await new Promise(done => setTimeout(done, Number(params.get("tail") || 1500)));
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


@asynccontextmanager
async def room_finals(nats_url: str) -> AsyncIterator[list[CaptionFrame]]:
    """The non-empty final captions of the page's room, as they arrive on NATS."""
    nc = await nats.connect(nats_url)
    finals: list[CaptionFrame] = []

    async def collect(msg: Msg) -> None:
        frame = json.loads(msg.data)
        if frame.get("type") == "final" and frame.get("text", "").strip():
            finals.append(CaptionFrame.model_validate(frame))

    await nc.subscribe(Subjects().room_captions(ROOM), cb=collect)
    try:
        yield finals
    finally:
        await nc.drain()


@asynccontextmanager
async def page_server() -> AsyncIterator[str]:
    """The page's own origin: another port than the service's."""
    app = FastAPI()

    @app.get("/page.html")
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.replace("__ROOM__", ROOM))

    @app.get("/clip.wav")
    async def clip() -> FileResponse:
        return FileResponse(LIBRIVOX / f"{CLIP}.wav", media_type="audio/wav")

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=PAGE_HOST, port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        yield f"http://{PAGE_HOST}:{port}"
    finally:
        server.should_exit = True
        await task


async def run_page(
    page_base: str,
    service_url: str,
    key: str,
    tail_ms: int = 1500,
    microphone: tuple[Path, float] | None = None,
) -> dict[str, object]:
    """``microphone``: publish this WAV (and its length in s) from Chromium's fake capture
    device, as a microphone would, instead of playing the clip with Web Audio."""
    url = f"{page_base}/page.html?base={service_url}&key={key}&tail={tail_ms}"
    flags = BROWSER_FLAGS
    if microphone is not None:
        url += f"&mic={round(microphone[1] * 1000)}"
        flags += (
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={microphone[0]}%noloop",
        )
    async with open_page(chromium_binary() or "", url, flags) as page:
        result: dict[str, object] = await page.wait_for(
            "window.result && window.result.done && window.result", within_s=90
        )
        return result
