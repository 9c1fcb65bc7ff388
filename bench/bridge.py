"""`roomscribe bench bridge`: N audio tracks over real WebRTC into the bot vs a bare aiortc receiver.

The receiver runs in its own process (``python -m bench.bridge receiver``) so its CPU and RSS
are read from /proc (summed with its child processes). ``bot`` is the service's bridge and
live pipeline (whisper tiny.en) as ``serve`` runs it, recognition in its own process;
``bot-threads`` the same with recognition in threads of the bot process; ``bot-aiortc-decoder``
the bot with aiortc's own decoder thread per track (``bridge.decode_on_loop = false``); ``bare`` answers the same ``POST /v1/sessions`` with a plain aiortc peer that only decodes.
The sender (this process) sends pre-encoded Opus, so its own cost stays small: ``talkers``
tracks loop LibriVox utterances with pauses, the others send -60 dBFS room noise.

Per run: warm up, then over a window read the receiver's CPU (cores = CPU seconds / wall
seconds) and peak RSS, and from the receiver itself the audio frames it got per track and
wall second (pace; frames lost in transit are missing from it), its track lag (wall time
since a track's first frame minus the audio time received since; growth means it fell
behind), finals per talking participant and final latency (call time at emission minus the
end of the last word). ``runqueue_wait`` is the time
the receiver's threads waited for a CPU per wall second: high values mean other load on the
machine starved it, and its CPU figure is then a floor, not its cost. ``udp_drops`` counts
datagrams the kernel dropped because the receiver did not read its sockets in time.

CPU is the receiver's cost only where it kept pace (``cpu_is_cost`` in the summary): a
starved receiver did less work than the tracks asked for.

Real time held: pace >= 0.97 and lag growth at the window's end < 0.5 s; for the bot also no
audio skipped by recognition, a final from every talker and every final within 5 s.
"""

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import av
import httpx
import ifaddr
import numpy as np
import uvicorn
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.codecs.opus import OpusEncoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from fastapi import FastAPI, Request

from config import load_settings
from pipeline.runtime import LiveRuntime
from pipeline.sink import AnyFrame
from protocol import CaptionFrame, ErrorFrame
from sfu_bridge import Bridge, bridge_router
from sfu_bridge.ice import gather_on
from sfu_bridge.udp import own_socket_inodes, parse_udp_table

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
ROOM = "bench"
FRAME_S = 0.02
ROOT = Path(__file__).resolve().parents[1]
MODES = ("bot", "bot-threads", "bot-aiortc-decoder", "bare")


def host_address() -> str:
    """A non-loopback IPv4 address: aioice never offers 127.0.0.1."""
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                return ip.ip
    raise RuntimeError("no non-loopback IPv4 address: the WebRTC benchmark needs one")


# --- receiver side -----------------------------------------------------------------------


class Window(Protocol):
    def mark(self) -> None: ...

    def sample(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...


@dataclass
class TrackClock:
    """Wall time vs audio time of one received track."""

    first: float
    audio_s: float = 0.0

    def lag(self, now: float) -> float:
        return now - self.first - self.audio_s


class BareWindow:
    """The bare receiver: every track is read (Opus decoded) and its audio time counted."""

    def __init__(self) -> None:
        self.clocks: dict[str, TrackClock] = {}
        self.mark()

    def mark(self) -> None:
        self._marked = time.monotonic()
        self._audio0 = sum(c.audio_s for c in self.clocks.values())
        self._lag0 = self._lags()
        self._lag_max = 0.0

    def _lags(self) -> dict[str, float]:
        now = time.monotonic()
        return {key: clock.lag(now) for key, clock in self.clocks.items()}

    def sample(self) -> None:
        self._lag_max = max(self._lag_max, _growth(self._lag0, self._lags()))

    def stats(self) -> dict[str, Any]:
        wall = time.monotonic() - self._marked
        audio = sum(c.audio_s for c in self.clocks.values()) - self._audio0
        return {
            "tracks": len(self.clocks),
            "pace": round(audio / wall / max(1, len(self.clocks)), 3),
            "lag_growth_max_s": round(self._lag_max, 3),
            "lag_growth_end_s": round(_growth(self._lag0, self._lags()), 3),
        }

    async def consume(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if isinstance(frame, av.AudioFrame) and frame.sample_rate:
                clock = self.clocks.setdefault(track.id, TrackClock(time.monotonic()))
                if frame.pts is not None and frame.time_base is not None:
                    # audio time from pts: a DTX sender's gaps are audio time too
                    clock.audio_s = (
                        float(frame.pts * frame.time_base) + frame.samples / frame.sample_rate
                    )
                else:
                    clock.audio_s += frame.samples / frame.sample_rate


class BotWindow:
    """The bot: audio time per speaker stream, finals and their latency, error frames."""

    def __init__(self) -> None:
        self.call: Callable[[], Any] = lambda: None
        self.frames = 0
        # audio time the tracks delivered, their DTX gaps included (the bridge's counters)
        self.audio_time: Callable[[], float] = lambda: self.frames * FRAME_S
        self.mark()

    def heard(self) -> None:
        self.frames += 1

    def _streams(self) -> dict[str, Any]:
        call = self.call()
        return {} if call is None else dict(call.participants)

    def _lags(self) -> dict[str, float]:
        call = self.call()
        if call is None:
            return {}
        elapsed = call.elapsed
        return {
            who: elapsed - stream.offset - stream.audio_seconds
            for who, stream in call.participants.items()
        }

    def mark(self) -> None:
        self._marked = time.monotonic()
        self._frames0 = self.frames
        self._audio0 = self.audio_time()
        self._lag0 = self._lags()
        self._lag_max = 0.0
        self._skipped0 = sum(s.skipped_seconds for s in self._streams().values())
        self.finals: dict[str, int] = {}
        self.final_latency: list[float] = []
        self.partial_latency: list[float] = []
        self.partials = 0
        self.errors: list[str] = []

    def sample(self) -> None:
        self._lag_max = max(self._lag_max, _growth(self._lag0, self._lags()))

    def emit(self, frame: AnyFrame) -> None:
        if isinstance(frame, ErrorFrame):
            self.errors.append(frame.code)
        if not isinstance(frame, CaptionFrame):
            return
        call = self.call()
        if frame.type == "partial":
            self.partials += 1
            if call is not None:
                self.partial_latency.append(call.elapsed - frame.end)
            return
        if not frame.text.strip():
            return
        self.finals[frame.participant] = self.finals.get(frame.participant, 0) + 1
        if call is not None:
            end = frame.words[-1].end if frame.words else frame.end
            self.final_latency.append(call.elapsed - end)

    def stats(self) -> dict[str, Any]:
        streams = self._streams()
        wall = time.monotonic() - self._marked
        audio = self.audio_time() - self._audio0
        latency = self.final_latency
        return {
            "tracks": len(streams),
            "pace": round(audio / wall / max(1, len(streams)), 3),
            "lag_growth_max_s": round(self._lag_max, 3),
            "lag_growth_end_s": round(_growth(self._lag0, self._lags()), 3),
            "skipped_s": round(
                sum(s.skipped_seconds for s in streams.values()) - self._skipped0, 2
            ),
            "finals": dict(sorted(self.finals.items())),
            "partials": self.partials,
            "final_p50_s": _quantile(latency, 0.5),
            "final_p95_s": _quantile(latency, 0.95),
            "final_max_s": round(max(latency), 3) if latency else None,
            "partial_p50_s": _quantile(self.partial_latency, 0.5),
            "partial_p95_s": _quantile(self.partial_latency, 0.95),
            "errors": sorted(set(self.errors)),
        }


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 3)


def _growth(before: dict[str, float], now: dict[str, float]) -> float:
    """How much the most-behind track's lag grew since the mark."""
    return max((lag - before.get(key, lag) for key, lag in now.items()), default=0.0)


def _window_routes(app: FastAPI, window: Window) -> None:
    @app.post("/bench/mark")
    async def mark() -> dict[str, bool]:
        window.mark()
        return {"ok": True}

    @app.get("/bench/stats")
    async def stats() -> dict[str, Any]:
        return window.stats()


def bare_app(host: str, window: BareWindow) -> FastAPI:
    app = FastAPI()
    peers: list[RTCPeerConnection] = []
    tasks: set[asyncio.Task[None]] = set()
    _window_routes(app, window)

    @app.post("/v1/sessions")
    async def create(request: Request) -> dict[str, str]:
        body = await request.json()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        peers.append(pc)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            task = asyncio.ensure_future(window.consume(track))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="offer"))
        answer = await pc.createAnswer()
        with gather_on([host]):
            await pc.setLocalDescription(answer)
        return {"session_id": uuid.uuid4().hex, "sdp": pc.localDescription.sdp}

    return app


async def _sampling(window: Window) -> None:
    while True:
        window.sample()
        await asyncio.sleep(0.25)


async def serve_window(app: FastAPI, window: Window, port: int) -> None:
    """Serve a receiver's app while its window samples the lag."""
    sampler = asyncio.ensure_future(_sampling(window))
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    try:
        await uvicorn.Server(config).serve()
    finally:
        sampler.cancel()


async def serve_receiver(mode: str, port: int, data_dir: Path, host: str) -> None:
    async with _receiver(mode, data_dir, host) as (server_app, window):
        await serve_window(server_app, window, port)


class CountingBridge(Bridge):
    """The bridge, counting the 20 ms frames its tracks deliver (holes from loss not included)."""

    def __init__(self, runtime: LiveRuntime, window: BotWindow) -> None:
        super().__init__(runtime)
        self.window = window

    def heard(self, room: str) -> None:
        self.window.heard()
        super().heard(room)


@asynccontextmanager
async def _receiver(mode: str, data_dir: Path, host: str) -> Any:
    if mode == "bare":
        window = BareWindow()
        yield bare_app(host, window), window
        return

    bot = BotWindow()
    settings = load_settings(
        data_dir=data_dir,
        bridge={"host_addresses": [host], "decode_on_loop": mode != "bot-aiortc-decoder"},
        live={"recognizer_process": mode != "bot-threads"},
    )
    runtime = await LiveRuntime.create(settings, bot)
    bridge = CountingBridge(runtime, bot)

    def call() -> Any:
        return bridge.rooms.get(ROOM)

    bot.call = call
    bot.audio_time = lambda: bridge.audio.audio_s + bridge.audio.gap_s
    app = FastAPI()
    app.include_router(bridge_router(bridge))
    _window_routes(app, bot)
    try:
        yield app, bot
    finally:
        await bridge.aclose()
        await runtime.aclose()


# --- sender side -------------------------------------------------------------------------


def opus_packets(samples: np.ndarray) -> list[bytes]:
    """16 kHz mono int16 -> 20 ms Opus packets, encoded the way aiortc's sender would."""
    encoder = OpusEncoder()
    packets: list[bytes] = []
    step = int(16000 * FRAME_S)
    for begin in range(0, samples.size - step + 1, step):
        frame = av.AudioFrame.from_ndarray(
            samples[begin : begin + step].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = 16000
        frame.pts = begin
        frame.time_base = Fraction(1, 16000)
        payloads, _ = encoder.encode(frame)
        packets.extend(payloads)
    return packets


@dataclass
class Programs:
    """What the tracks send, pre-encoded once: room noise, and one looping speech program per talker."""

    silence: list[bytes]
    talk: list[list[bytes]]

    @classmethod
    def build(cls, talkers: int, seed: int = 11) -> "Programs":
        from pipeline.audio_io import decode_file

        rng = np.random.default_rng(seed)
        utterances = [decode_file(p) for p in sorted(LIBRIVOX.glob("*.wav"))]
        noise = (rng.standard_normal(16000 * 10) * 30).astype(np.int16)  # -60 dBFS
        talk = []
        for index in range(talkers):
            parts = []
            for turn in range(len(utterances)):
                audio = utterances[(index + turn) % len(utterances)]
                pause = (rng.standard_normal(int(rng.uniform(1.0, 2.5) * 16000)) * 30).astype(
                    np.int16
                )
                parts += [audio, pause]
            talk.append(opus_packets(np.concatenate(parts)))
        return cls(opus_packets(noise), talk)


class Pace:
    """How late the sender's tracks got (a late sender starves the receiver, not its fault)."""

    def __init__(self) -> None:
        self.late_max = 0.0


class PacketTrack(MediaStreamTrack):
    """Sends pre-encoded Opus packets in real time, looping from ``start``."""

    kind = "audio"

    def __init__(self, packets: list[bytes], start: int, pace: Pace, every: int = 1) -> None:
        """``every`` > 1: one packet per ``every`` frames with the RTP time running on, as an
        Opus DTX sender does in silence (every=20: one per 400 ms)."""
        super().__init__()
        self.packets = packets
        self.start = start
        self.pace = pace
        self.every = every
        self.sent = 0
        self._t0: float | None = None

    async def recv(self) -> av.Packet:  # type: ignore[override]
        if self._t0 is None:
            self._t0 = time.monotonic()
        wait = self._t0 + self.sent * self.every * FRAME_S - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        else:
            self.pace.late_max = max(self.pace.late_max, -wait)
        packet = av.Packet(self.packets[(self.start + self.sent) % len(self.packets)])
        packet.pts = self.sent * self.every * 960
        packet.time_base = Fraction(1, 48000)
        self.sent += 1
        return packet


# --- driver ------------------------------------------------------------------------------


def family(pid: int) -> list[int]:
    """``pid`` and its child processes (the bot's recognition process)."""
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                pids.append(int(entry.name))
    return pids


def _each(pid: int, read: Callable[[int], float]) -> float:
    total = 0.0
    for member in family(pid):
        try:
            total += read(member)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _wait_s(pid: int) -> float:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1e9


def proc_cpu_s(pid: int) -> float:
    return _each(pid, _cpu_s)


def proc_rss_mb(pid: int) -> float:
    return _each(pid, _rss_mb)


def proc_wait_s(pid: int) -> float:
    """Seconds the processes' threads spent runnable but waiting for a CPU (other load)."""
    return _each(pid, _wait_s)


def udp_drops(pid: int) -> int:
    """Datagrams the kernel dropped on the process's UDP sockets (its receive buffer was full)."""
    inodes = own_socket_inodes(Path(f"/proc/{pid}/fd"))
    rows: dict[int, tuple[int, int]] = {}
    for table in ("udp", "udp6"):
        rows |= parse_udp_table(Path(f"/proc/{pid}/net/{table}").read_text(), inodes)
    return sum(drops for _, drops in rows.values())


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _until_ready(client: httpx.AsyncClient, receiver: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if receiver.poll() is not None:
            raise RuntimeError(f"receiver exited with {receiver.returncode}")
        try:
            if (await client.get("/bench/stats")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.3)
    raise RuntimeError("receiver not ready after 120 s")


async def measure(
    mode: str,
    tracks: int,
    talkers: int,
    programs: Programs,
    receiver: subprocess.Popen[bytes],
    port: int,
    host: str,
    warmup: float,
    seconds: float,
    dtx: bool = False,
) -> dict[str, Any]:
    pace = Pace()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        await _until_ready(client, receiver)
        try:
            senders = []
            for index in range(tracks):
                if index < talkers:
                    track = PacketTrack(programs.talk[index], 0, pace)
                else:
                    track = PacketTrack(programs.silence, index * 37, pace, 20 if dtx else 1)
                senders.append(pc.addTransceiver(track, direction="sendonly"))
            offer = await pc.createOffer()
            with gather_on([host]):
                await pc.setLocalDescription(offer)
            names = {
                t.mid: {"participant": f"talker{i}" if i < talkers else f"silent{i}"}
                for i, t in enumerate(senders)
            }
            reply = await client.post(
                "/v1/sessions",
                json={
                    "room": ROOM,
                    "sdp": pc.localDescription.sdp,
                    "tracks": names,
                    "ice_servers": [],
                },
            )
            reply.raise_for_status()
            await pc.setRemoteDescription(
                RTCSessionDescription(sdp=reply.json()["sdp"], type="answer")
            )
            deadline = time.monotonic() + 30
            while pc.connectionState != "connected":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no WebRTC connection: {pc.connectionState}")
                await asyncio.sleep(0.1)
            await asyncio.sleep(warmup)
            await client.post("/bench/mark")
            pace.late_max = 0.0
            load0 = os.getloadavg()[0]
            wait0, drops0 = proc_wait_s(receiver.pid), udp_drops(receiver.pid)
            main0 = _cpu_s(receiver.pid)
            cpu0, own0, wall0 = proc_cpu_s(receiver.pid), self_cpu_s(), time.monotonic()
            rss = proc_rss_mb(receiver.pid)
            while time.monotonic() - wall0 < seconds:
                await asyncio.sleep(1.0)
                rss = max(rss, proc_rss_mb(receiver.pid))
            cpu1, own1, wall1 = proc_cpu_s(receiver.pid), self_cpu_s(), time.monotonic()
            main1 = _cpu_s(receiver.pid)
            wait1, drops1 = proc_wait_s(receiver.pid), udp_drops(receiver.pid)
            seen = (await client.get("/bench/stats")).json()
        finally:
            await pc.close()
    wall = wall1 - wall0
    return {
        "mode": mode,
        "tracks": tracks,
        "talking": talkers,
        "dtx": dtx,
        "window_s": round(wall, 1),
        "cpu_cores": round((cpu1 - cpu0) / wall, 3),
        # the process that receives RTP, without the recognition process
        "media_cpu_cores": round((main1 - main0) / wall, 3),
        "runqueue_wait": round((wait1 - wait0) / wall, 3),
        "udp_drops": drops1 - drops0,
        "rss_mb": round(rss, 1),
        "sender_cpu_cores": round((own1 - own0) / wall, 3),
        "sender_late_max_s": round(pace.late_max, 3),
        "load_avg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "receiver": seen,
    }


def run_one(
    mode: str,
    tracks: int,
    talkers: int,
    programs: Programs,
    warmup: float,
    seconds: float,
    dtx: bool = False,
) -> dict[str, Any]:
    port = free_port()
    host = host_address()
    with tempfile.TemporaryDirectory() as data:
        command = [sys.executable, "-m", "bench.bridge", "receiver", "--mode", mode]
        command += ["--port", str(port), "--data-dir", data, "--host", host]
        receiver = subprocess.Popen(command, cwd=ROOT)
        try:
            return asyncio.run(
                measure(mode, tracks, talkers, programs, receiver, port, host, warmup, seconds, dtx)
            )
        finally:
            stop_receiver(receiver)


def stop_receiver(receiver: subprocess.Popen[bytes]) -> None:
    receiver.terminate()
    try:
        receiver.wait(15)
    except subprocess.TimeoutExpired:
        receiver.kill()
        receiver.wait()


def kept_pace(run: dict[str, Any]) -> bool:
    seen = run["receiver"]
    return bool(seen["pace"] >= 0.97 and seen["lag_growth_end_s"] < 0.5)


def realtime_held(run: dict[str, Any]) -> bool:
    seen = run["receiver"]
    held = kept_pace(run)
    if run["mode"] != "bare":
        held = held and not seen["skipped_s"] and len(seen["finals"]) >= run["talking"]
        held = held and (seen["final_max_s"] or 0.0) < 5.0
    return bool(held)


def summarize(runs: list[dict[str, Any]], talkers: int) -> list[dict[str, Any]]:
    cpu = {(r["mode"], r["tracks"], r["talking"]): r["cpu_cores"] for r in runs}
    modes = list(dict.fromkeys(r["mode"] for r in runs))
    rows = []
    for count in sorted({r["tracks"] for r in runs}):
        row: dict[str, Any] = {"tracks": count}
        for mode in modes:
            silent, talking = cpu.get((mode, count, 0)), cpu.get((mode, count, talkers))
            if silent is None or talking is None:
                continue
            per_silent = silent / count
            row[f"{mode}_per_silent_track_cores"] = round(per_silent, 4)
            row[f"{mode}_per_talking_track_cores"] = round(
                (talking - (count - talkers) * per_silent) / talkers, 4
            )
            row[f"{mode}_cores_{talkers}_talking"] = talking
            row[f"{mode}_rss_mb_{talkers}_talking"] = next(
                r["rss_mb"]
                for r in runs
                if (r["mode"], r["tracks"], r["talking"]) == (mode, count, talkers)
            )
        bare = cpu.get(("bare", count, 0))
        for mode in modes:
            bot = cpu.get((mode, count, 0))
            if mode != "bare" and bot is not None and bare:
                row[f"{mode}_overhead_silent"] = round(bot / bare - 1, 3)
        row["cpu_is_cost"] = all(kept_pace(r) for r in runs if r["tracks"] == count)
        for mode in modes:
            row[f"{mode}_realtime_held"] = all(
                r["realtime_held"] for r in runs if r["mode"] == mode and r["tracks"] == count
            )
        rows.append(row)
    return rows


def main(
    tracks: list[int],
    talkers: int,
    seconds: float,
    warmup: float,
    out: str | None,
    dtx: bool = False,
    modes: tuple[str, ...] = ("bot", "bare"),
) -> None:
    """``dtx``: the silent tracks send as an Opus DTX sender does (a packet per 400 ms)."""
    programs = Programs.build(talkers)
    lines: list[dict[str, Any]] = [
        {
            "machine": {
                "cpus": os.cpu_count(),
                "load_avg": [round(x, 2) for x in os.getloadavg()],
            },
            "dtx": dtx,
        }
    ]
    print(json.dumps(lines[0]), flush=True)
    runs = []
    for count in tracks:
        for mode in modes:
            for talking in (0, talkers):
                run = run_one(mode, count, talking, programs, warmup, seconds, dtx)
                run["realtime_held"] = realtime_held(run)
                print(json.dumps(run), flush=True)
                runs.append(run)
    summary = summarize(runs, talkers)
    for row in summary:
        print(json.dumps({"summary": row}), flush=True)
    if out:
        Path(out).write_text(json.dumps(lines + runs + [{"summary": summary}], indent=2))


def _receiver_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bridge receiver")
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--host", required=True)
    args = parser.parse_args(argv)
    asyncio.run(serve_receiver(args.mode, args.port, args.data_dir, args.host))


if __name__ == "__main__":
    if sys.argv[1:2] != ["receiver"]:
        sys.exit(
            "usage: python -m bench.bridge receiver --mode "
            + "|".join(MODES)
            + " --port P --data-dir D --host H"
        )
    _receiver_main(sys.argv[2:])
