"""`roomscribe bench jitsi`: N tagged Opus streams on one Jitsi socket, beside the WebRTC bridge.

The receiver runs in its own process (``python -m bench.jitsi receiver``): the live runtime
and ``WS /transcribe`` (whisper tiny.en), so its CPU and RSS are read from /proc. The sender
(this process) sends the same pre-encoded 20 ms Opus packets as ``bench bridge`` (LibriVox
for ``talking`` tags, -60 dBFS room noise for the others: continuous Opus, no DTX) as
``media`` messages in real time, every tag every 20 ms. Then, in the same run, ``bench
bridge``'s bot is measured with the same tracks over real WebRTC.

Real time held (both): pace >= 0.97, lag growth at the window's end < 0.5 s, no audio
skipped by recognition, a final from every talker and every final within 5 s.
"""

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from websockets.asyncio.client import connect

from api.compat.jitsi import JitsiSession, jitsi_router
from bench.bridge import (
    FRAME_S,
    ROOM,
    BotWindow,
    Programs,
    _until_ready,
    _window_routes,
    free_port,
    proc_cpu_s,
    proc_rss_mb,
    proc_wait_s,
    realtime_held,
    run_one,
    self_cpu_s,
    serve_window,
    stop_receiver,
)
from config import load_settings
from pipeline.runtime import LiveRuntime

ROOT = Path(__file__).resolve().parents[1]


class JitsiWindow(BotWindow):
    """The bot's window, its audio counted from the speaker streams (continuous Opus: no holes)."""

    def _count(self) -> None:
        self.frames = round(sum(s.audio_seconds for s in self._streams().values()) / FRAME_S)

    def mark(self) -> None:
        self._count()
        super().mark()

    def stats(self) -> dict[str, Any]:
        self._count()
        return super().stats()


@asynccontextmanager
async def _receiver(data_dir: Path) -> Any:
    window = JitsiWindow()
    settings = load_settings(data_dir=data_dir, limits={"max_streams": 0})
    runtime = await LiveRuntime.create(settings, window)
    sessions: dict[str, JitsiSession] = {}

    def call() -> Any:
        session = sessions.get(ROOM)
        return None if session is None else session.call

    window.call = call
    app = FastAPI()
    app.include_router(jitsi_router(runtime, settings, sessions=sessions))
    _window_routes(app, window)
    try:
        yield app, window
    finally:
        await runtime.aclose()


async def serve_receiver(port: int, data_dir: Path) -> None:
    async with _receiver(data_dir) as (app, window):
        await serve_window(app, window, port)


def _payloads(programs: Programs, tracks: int, talking: int) -> list[tuple[str, list[str]]]:
    """Per tag, its name and its packets in base64 (a program loops; numbering does not)."""
    out = []
    for index in range(tracks):
        packets = programs.talk[index] if index < talking else programs.silence
        start = 0 if index < talking else index * 37
        looped = packets[start:] + packets[:start]
        tag = f"{'talker' if index < talking else 'silent'}{index}-{1000 + index}"
        out.append((tag, [base64.b64encode(p).decode() for p in looped]))
    return out


def _media(tag: str, payloads: list[str], n: int) -> str:
    media = {"tag": tag, "chunk": n, "timestamp": (n * 960) % (1 << 32)}
    return json.dumps(
        {"event": "media", "media": {**media, "payload": payloads[n % len(payloads)]}}
    )


async def measure(
    tracks: int,
    talking: int,
    programs: Programs,
    receiver: subprocess.Popen[bytes],
    port: int,
    warmup: float,
    seconds: float,
) -> dict[str, Any]:
    streams = _payloads(programs, tracks, talking)
    late_max = 0.0
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        await _until_ready(client, receiver)
        url = f"ws://127.0.0.1:{port}/transcribe?sessionId={ROOM}&sendBack=true"
        async with connect(url, max_size=None) as ws:
            stop = asyncio.Event()

            async def drain() -> None:
                async for _ in ws:
                    pass

            async def send() -> None:
                nonlocal late_max
                t0, n = time.monotonic(), 0
                while not stop.is_set():
                    wait = t0 + n * FRAME_S - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    else:
                        late_max = max(late_max, -wait)
                    for tag, payloads in streams:
                        await ws.send(_media(tag, payloads, n))
                    n += 1

            reader = asyncio.create_task(drain())
            sender = asyncio.create_task(send())
            await asyncio.sleep(warmup)
            await client.post("/bench/mark")
            late_max = 0.0
            load0 = os.getloadavg()[0]
            wait0 = proc_wait_s(receiver.pid)
            cpu0, own0, wall0 = proc_cpu_s(receiver.pid), self_cpu_s(), time.monotonic()
            rss = proc_rss_mb(receiver.pid)
            while time.monotonic() - wall0 < seconds:
                await asyncio.sleep(1.0)
                rss = max(rss, proc_rss_mb(receiver.pid))
            cpu1, own1, wall1 = proc_cpu_s(receiver.pid), self_cpu_s(), time.monotonic()
            wait1 = proc_wait_s(receiver.pid)
            seen = (await client.get("/bench/stats")).json()
            stop.set()
            await sender
            await ws.close()
            await reader
    wall = wall1 - wall0
    return {
        "mode": "jitsi",
        "tracks": tracks,
        "talking": talking,
        "window_s": round(wall, 1),
        "cpu_cores": round((cpu1 - cpu0) / wall, 3),
        "runqueue_wait": round((wait1 - wait0) / wall, 3),
        "rss_mb": round(rss, 1),
        "sender_cpu_cores": round((own1 - own0) / wall, 3),
        "sender_late_max_s": round(late_max, 3),
        "load_avg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "receiver": seen,
    }


def run_jitsi(
    tracks: int, talking: int, programs: Programs, warmup: float, seconds: float
) -> dict[str, Any]:
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        command = [sys.executable, "-m", "bench.jitsi", "receiver", "--port", str(port)]
        receiver = subprocess.Popen([*command, "--data-dir", data], cwd=ROOT)
        try:
            return asyncio.run(measure(tracks, talking, programs, receiver, port, warmup, seconds))
        finally:
            stop_receiver(receiver)


def main(
    tracks: list[int],
    talkers: int,
    seconds: float,
    warmup: float,
    out: str | None,
    webrtc: bool = True,
) -> None:
    programs = Programs.build(talkers)
    head = {"machine": {"cpus": os.cpu_count(), "load_avg": [round(x, 2) for x in os.getloadavg()]}}
    print(json.dumps(head), flush=True)
    runs = []
    for count in tracks:
        for talking in (0, talkers):
            measured = [run_jitsi(count, talking, programs, warmup, seconds)]
            if webrtc:
                bridge = run_one("bot", count, talking, programs, warmup, seconds)
                measured.append({**bridge, "mode": "webrtc"})
            for run in measured:
                run["realtime_held"] = realtime_held({**run, "mode": "bot"})
                print(json.dumps(run), flush=True)
                runs.append(run)
    summary = []
    for mode in ("jitsi", "webrtc"):
        mine = [r for r in runs if r["mode"] == mode]
        if not mine:
            continue
        row: dict[str, Any] = {"mode": mode}
        for count in sorted({r["tracks"] for r in mine}):
            cpu = {r["talking"]: r["cpu_cores"] for r in mine if r["tracks"] == count}
            if 0 in cpu and talkers in cpu:
                silent = cpu[0] / count
                row[f"{count}_per_silent_cores"] = round(silent, 4)
                row[f"{count}_per_talking_cores"] = round(
                    (cpu[talkers] - (count - talkers) * silent) / talkers, 4
                )
                row[f"{count}_cores_{talkers}_talking"] = cpu[talkers]
        held = [r["tracks"] for r in mine if r["talking"] == talkers and r["realtime_held"]]
        row["largest_realtime"] = max(held, default=0)
        summary.append(row)
        print(json.dumps({"summary": row}), flush=True)
    if out:
        Path(out).write_text(json.dumps([head, *runs, {"summary": summary}], indent=2))


if __name__ == "__main__":
    if sys.argv[1:2] != ["receiver"]:
        sys.exit("usage: python -m bench.jitsi receiver --port P --data-dir D")
    parser = argparse.ArgumentParser(prog="python -m bench.jitsi receiver")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args(sys.argv[2:])
    asyncio.run(serve_receiver(args.port, args.data_dir))
