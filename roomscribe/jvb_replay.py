"""Play what a Jitsi Videobridge sends to a transcription socket, and read what comes back.

* :func:`opus_packets` encodes 16 kHz speech into the 20 ms Opus packets a browser sends;
* :class:`TagProgram` / :func:`media_messages` lay several tagged streams (speech, silence,
  gaps where nothing is sent, overlap) on one timeline of ``media`` messages with chunk
  numbers and RTP timestamps, as the bridge would send them;
* :func:`read_dump` / :func:`write_dump` read and write the ``media.jsonl`` dump format of
  ``opus-transcriber-proxy`` (``{"timestamp": ms, "direction": "incoming", "data": "<frame>"}``);
* :func:`replay` sends timed frames in real time or as fast as possible and collects the
  ``transcription-result`` messages (``roomscribe jitsi replay`` and the benchmark use it).
"""

import asyncio
import base64
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

FRAME_S = 0.02
OPUS_RATE = 48_000
STEP = 960  # RTP timestamp units per 20 ms packet

Timed = tuple[float, str | bytes]  # seconds since the first frame, the frame (binary: bytes)


def opus_packets(samples: np.ndarray, rate: int = 16_000, bitrate: int = 32_000) -> list[bytes]:
    """Mono int16 speech -> 20 ms Opus packets (48 kHz, libopus through PyAV), one per 20 ms
    of input (the tail padded with silence)."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=OPUS_RATE)
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(samples, np.int16).reshape(1, -1), format="s16", layout="mono"
    )
    frame.sample_rate = rate
    pcm = np.concatenate(
        [
            f.to_ndarray().reshape(-1)
            for f in [*resampler.resample(frame), *resampler.resample(None)]
        ]
        or [np.zeros(0, np.int16)]
    ).astype(np.int16)
    count = -(-round(samples.size * OPUS_RATE / rate) // STEP)
    pcm = np.concatenate([pcm, np.zeros(max(0, count * STEP - pcm.size), np.int16)])[: count * STEP]
    encoder = av.CodecContext.create("libopus", "w")
    assert isinstance(encoder, av.AudioCodecContext)
    encoder.sample_rate = OPUS_RATE
    encoder.layout = "mono"
    encoder.format = "s16"
    encoder.bit_rate = bitrate
    encoder.open()
    packets: list[bytes] = []
    for index in range(count):
        piece = av.AudioFrame.from_ndarray(
            pcm[index * STEP : (index + 1) * STEP].reshape(1, -1), format="s16", layout="mono"
        )
        piece.sample_rate = OPUS_RATE
        piece.pts = index * STEP
        piece.time_base = Fraction(1, OPUS_RATE)
        packets += [bytes(p) for p in encoder.encode(piece)]
    packets += [bytes(p) for p in encoder.encode(None)]
    return packets[:count] + [packets[-1]] * max(0, count - len(packets))


@dataclass
class TagProgram:
    """One tagged stream: ``turns`` of speech at given seconds on the shared timeline, silence
    between them sent as Opus packets (``gaps=False``) or not sent at all (``gaps=True``, a
    muted or DTX sender: chunk numbers and timestamps still advance)."""

    tag: str
    turns: list[tuple[float, np.ndarray]]
    gaps: bool = False
    chunk0: int = 1000
    timestamp0: int = 0
    numbers_as_strings: bool = False
    packets: list[bytes] = field(default_factory=list)
    first_frame: int = 0

    def encode(self, rate: int = 16_000) -> None:
        start = min(at for at, _ in self.turns)
        end = max(at + audio.size / rate for at, audio in self.turns)
        self.first_frame = int(start / FRAME_S)
        timeline = np.zeros(round((end - self.first_frame * FRAME_S) * rate) + rate // 2, np.int16)
        self._speaking = np.zeros(-(-timeline.size // round(FRAME_S * rate)), bool)
        for at, audio in self.turns:
            begin = round((at - self.first_frame * FRAME_S) * rate)
            timeline[begin : begin + audio.size] = audio
            frame = round(FRAME_S * rate)
            self._speaking[begin // frame : -(-(begin + audio.size) // frame) + 5] = True
        self.packets = opus_packets(timeline, rate)

    def frames(self) -> Iterable[tuple[int, dict[str, Any]]]:
        """(frame index on the shared timeline, media object) for every packet sent."""
        for index, packet in enumerate(self.packets):
            if self.gaps and index < len(self._speaking) and not self._speaking[index]:
                continue
            chunk = self.chunk0 + index
            timestamp = (self.timestamp0 + index * STEP) % (1 << 32)
            media = {
                "tag": self.tag,
                "chunk": str(chunk) if self.numbers_as_strings else chunk,
                "timestamp": str(timestamp) if self.numbers_as_strings else timestamp,
                "payload": base64.b64encode(packet).decode(),
            }
            yield self.first_frame + index, media


def media_messages(programs: Sequence[TagProgram]) -> list[Timed]:
    """Every program's ``media`` messages, interleaved in time as a bridge sends them."""
    for program in programs:
        if not program.packets:
            program.encode()
    timed = [
        (frame * FRAME_S, order, json.dumps({"event": "media", "media": media}))
        for order, program in enumerate(programs)
        for frame, media in program.frames()
    ]
    timed.sort(key=lambda item: (item[0], item[1]))
    return [(at, text) for at, _, text in timed]


def write_dump(path: Path, messages: Iterable[Timed], epoch_ms: int | None = None) -> None:
    base = int(time.time() * 1000) if epoch_ms is None else epoch_ms
    with path.open("w") as out:
        for at, text in messages:
            if isinstance(text, bytes):
                continue
            line = {"timestamp": base + round(at * 1000), "direction": "incoming", "data": text}
            out.write(json.dumps(line) + "\n")


def read_dump(path: Path) -> list[Timed]:
    """The incoming frames of a ``media.jsonl`` dump, timed from its first line."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: not a JSON line") from exc
        if row.get("direction", "incoming") != "incoming" or not isinstance(row.get("data"), str):
            continue
        rows.append((float(row.get("timestamp", 0)) / 1000, row["data"]))
    if not rows:
        return []
    first = rows[0][0]
    return [(at - first, text) for at, text in rows]


@dataclass
class Replayed:
    """What the server sent back, and how the socket ended."""

    results: list[dict[str, Any]] = field(default_factory=list)
    others: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    sent: int = 0
    send_s: float = 0.0
    late_max_s: float = 0.0

    def finals(self, participant: str | None = None) -> list[dict[str, Any]]:
        return [
            r
            for r in self.results
            if not r["is_interim"]
            and (participant is None or r["participant"]["id"] == participant)
        ]

    def interims(self) -> list[dict[str, Any]]:
        return [r for r in self.results if r["is_interim"]]

    def text(self, participant: str) -> str:
        return " ".join(r["transcript"][0]["text"] for r in self.finals(participant))

    def participants(self) -> list[str]:
        return sorted({r["participant"]["id"] for r in self.results})


async def replay(
    url: str,
    messages: Sequence[Timed],
    *,
    realtime: bool = True,
    linger_s: float = 3.0,
    max_wait_s: float = 120.0,
    headers: dict[str, str] | None = None,
) -> Replayed:
    """Send ``messages`` (at their times, or back to back), then wait until no result has come
    for ``linger_s`` (at most ``max_wait_s``) and close."""
    out = Replayed()
    last_result = time.monotonic()
    async with connect(url, max_size=None, additional_headers=headers) as ws:

        async def read() -> None:
            nonlocal last_result
            try:
                async for message in ws:
                    body = json.loads(message)
                    if body.get("type") == "transcription-result":
                        out.results.append(body)
                        last_result = time.monotonic()
                    else:
                        out.others.append(body)
            except ConnectionClosed:
                pass

        reader = asyncio.create_task(read())
        t0 = time.monotonic()
        try:
            for at, text in messages:
                if realtime:
                    wait = t0 + at - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    else:
                        out.late_max_s = max(out.late_max_s, -wait)
                await ws.send(text)
                out.sent += 1
            out.send_s = time.monotonic() - t0
            await ws.send(json.dumps({"event": "ping", "id": 1}))
            last_result = time.monotonic()
            deadline = time.monotonic() + max_wait_s
            while not reader.done() and time.monotonic() < deadline:
                if time.monotonic() - last_result >= linger_s:
                    break
                await asyncio.sleep(0.1)
        except ConnectionClosed:
            pass
        await ws.close()
        await reader
        out.close_code = ws.close_code
        out.close_reason = ws.close_reason or ""
    return out
