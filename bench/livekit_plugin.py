"""``python -m bench.livekit_plugin``: the LiveKit Agents plugin beside a plain ``/v1/listen``
client on the same audio, against one ``roomscribe serve`` process.

Both feed the LibriVox dev set (five utterances, a second of silence around each) on a
real-time clock: the plugin as LiveKit would, ``rtc.AudioFrame``\\s of 10 ms at 48 kHz mono
pushed into ``stt.stream()``; the direct client 20 ms pieces of 16 kHz s16le. Runs alternate
so that the shared machine's load falls on both alike. Per system: WER of the finals, and
final latency (the arrival of a final minus the moment the feed clock passed the final's
end).
"""

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
from websockets.asyncio.client import connect

from bench.accuracy import librivox_set, score

STEP_S = 0.02


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _to_48k(samples: np.ndarray) -> bytes:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 16000
    out = [
        f.to_ndarray().reshape(-1) for f in [*resampler.resample(frame), *resampler.resample(None)]
    ]
    return np.concatenate(out).astype("<i2").tobytes()


def _latencies(finals: list[tuple[float, float]], clock: float) -> dict[str, Any]:
    """``finals``: (audio end of the final, monotonic arrival)."""
    return {"final_latencies_s": [round(arrived - (clock + end), 3) for end, arrived in finals]}


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"final_p50_s": None, "final_p95_s": None}
    return {
        "final_p50_s": round(float(np.percentile(values, 50)), 2),
        "final_p95_s": round(float(np.percentile(values, 95)), 2),
    }


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def direct(url: str, track: np.ndarray) -> tuple[list[str], dict[str, Any]]:
    texts: list[str] = []
    finals: list[tuple[float, float]] = []
    data = track.astype("<i2").tobytes()
    step = int(STEP_S * 16000) * 2
    async with connect(url, max_size=None) as ws:
        start = {"type": "start", "sample_rate": 16000, "language": "en", "interim_results": True}
        await ws.send(json.dumps(start))
        json.loads(await ws.recv())  # ready

        async def receive() -> None:
            async for message in ws:
                frame = json.loads(message)
                if frame["type"] == "final":
                    finals.append((frame["end"], time.monotonic()))
                    texts.append(frame["text"])
                elif frame["type"] == "completed":
                    return

        reader = asyncio.create_task(receive())
        loop = asyncio.get_running_loop()
        clock = time.monotonic()
        began = loop.time()
        for index, at in enumerate(range(0, len(data), step)):
            await ws.send(data[at : at + step])
            await asyncio.sleep(max(0.0, began + (index + 1) * STEP_S - loop.time()))
        await ws.send(json.dumps({"type": "end"}))
        await reader
    return texts, _latencies(finals, clock)


async def plugin(base_url: str, track: np.ndarray) -> tuple[list[str], dict[str, Any]]:
    import aiohttp
    from livekit import rtc
    from livekit.agents import stt
    from livekit.plugins import roomscribe

    data = _to_48k(track)
    step = 480 * 2  # 10 ms at 48 kHz mono
    texts: list[str] = []
    finals: list[tuple[float, float]] = []
    async with aiohttp.ClientSession() as http:
        stream = roomscribe.STT(base_url=base_url, http_session=http).stream()

        async def receive() -> None:
            async for event in stream:
                if event.type == stt.SpeechEventType.FINAL_TRANSCRIPT:
                    finals.append((event.alternatives[0].end_time, time.monotonic()))
                    texts.append(event.alternatives[0].text)

        reader = asyncio.create_task(receive())
        loop = asyncio.get_running_loop()
        clock = time.monotonic()
        began = loop.time()
        for index, at in enumerate(range(0, len(data), step)):
            piece = data[at : at + step]
            stream.push_frame(rtc.AudioFrame(piece, 48000, 1, len(piece) // 2))
            await asyncio.sleep(max(0.0, began + (index + 1) * 0.01 - loop.time()))
        stream.end_input()
        await reader
        await stream.aclose()
    return texts, _latencies(finals, clock)


def _serve(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "ROOMSCRIBE_DATA_DIR": str(data_dir),
        "ROOMSCRIBE_API__HOST": "127.0.0.1",
        "ROOMSCRIBE_API__PORT": str(port),
        "ROOMSCRIBE_POSTCALL__RUN_WORKER": "false",
    }
    log = open(data_dir / "serve.log", "wb")  # noqa: SIM115 - kept open for the process
    return subprocess.Popen(
        [sys.executable, "-m", "roomscribe", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
    )


async def _wait_up(url: str) -> None:
    async with httpx.AsyncClient() as client, asyncio.timeout(120):
        while True:
            try:
                if (await client.get(f"{url}/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.3)


async def run(runs: int) -> list[dict[str, Any]]:
    meeting = librivox_set()
    track = meeting.tracks["reader"]
    reference = " ".join(u.text for u in meeting.utterances)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        server = _serve(Path(tmp), port)
        try:
            base = f"http://127.0.0.1:{port}"
            await _wait_up(base)
            for run_index in range(runs):
                for system in ("direct /v1/listen", "livekit plugin"):
                    load = os.getloadavg()[0]
                    cpu = _cpu_s()
                    if system == "livekit plugin":
                        texts, latency = await plugin(base, track)
                    else:
                        texts, latency = await direct(f"ws://127.0.0.1:{port}/v1/listen", track)
                    client_cpu = _cpu_s() - cpu
                    row = {
                        "system": system,
                        "run": run_index,
                        "wer": score([reference], [" ".join(texts)]).wer,
                        "finals": len(texts),
                        **_percentiles(latency["final_latencies_s"]),
                        **latency,
                        "client_cpu_per_audio_s": round(client_cpu / (track.size / 16000), 4),
                        "load_1m": round(load, 2),
                        "audio_s": round(track.size / 16000, 1),
                    }
                    print(json.dumps(row), flush=True)
                    rows.append(row)
        finally:
            server.terminate()
            server.wait(30)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()
    rows = asyncio.run(run(args.runs))
    print(f"cpu cores {os.cpu_count()}")
    print(
        "| system | run | WER | finals | final p50 / p95 s | client CPU s per audio s | load 1m |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['system']} | {r['run']} | {r['wer']:.3f} | {r['finals']} | "
            f"{r['final_p50_s']} / {r['final_p95_s']} | {r['client_cpu_per_audio_s']} | "
            f"{r['load_1m']} |"
        )
    for system in dict.fromkeys(r["system"] for r in rows):
        pooled = [v for r in rows if r["system"] == system for v in r["final_latencies_s"]]
        p = _percentiles(pooled)
        print(f"| {system} | all | | {len(pooled)} | {p['final_p50_s']} / {p['final_p95_s']} | | |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
