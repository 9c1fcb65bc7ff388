"""`roomscribe bench live`: N participants fed in real time, at most `talkers` talking.

For each N it reports whether real time held, partial latency (wall time from the moment the
newest audio in a partial was fed to the moment the frame was emitted), final latency (from
the end of the last recognised word to the final being emitted), CPU (cores used), RSS and
WER of the finals. The peer in the same run is the naive approach: each utterance transcribed
with the same model only after it ends (no partials).
"""

import asyncio
import json
import resource
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np

from bench.scoring import wer
from config import load_settings
from engines.factory import load_engine
from engines.whisper_chunked import WhisperChunkedEngine
from pipeline.call import CallSession
from pipeline.runtime import LiveRuntime
from pipeline.sink import AnyFrame
from protocol import CaptionFrame

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
CHUNK = 320  # 20 ms


@dataclass
class Utterance:
    start: float
    end: float
    text: str


@dataclass
class Track:
    samples: np.ndarray
    utterances: list[Utterance] = field(default_factory=list)


def speech_pool() -> list[tuple[np.ndarray, str]]:
    from pipeline.audio_io import decode_file

    refs = {}
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        text, _, fileid = line.rpartition("(")
        refs[fileid.strip(") ")] = text.replace("<s>", "").replace("</s>", "").strip()
    return [(decode_file(p), refs[p.stem]) for p in sorted(LIBRIVOX.glob("*.wav"))]


def build_tracks(participants: int, talkers: int, seconds: float, seed: int = 7) -> list[Track]:
    rng = np.random.default_rng(seed)
    pool = speech_pool()
    total = int(seconds * 16000)
    tracks = []
    for index in range(participants):
        noise = (rng.standard_normal(total) * 30).astype(np.int16)  # -60 dBFS room noise
        track = Track(noise.copy())
        if index < talkers:
            at = 1.0 + index * 1.7
            while True:
                audio, text = pool[int(rng.integers(len(pool)))]
                begin = int(at * 16000)
                if begin + audio.size > total - 16000:
                    break
                track.samples[begin : begin + audio.size] += audio
                track.utterances.append(Utterance(at, at + audio.size / 16000, text))
                at += audio.size / 16000 + float(rng.uniform(1.0, 3.0))
        tracks.append(track)
    return tracks


class TimingSink:
    def __init__(self) -> None:
        self.clock = 0.0
        self.partial_latency: list[float] = []
        self.final_latency: list[float] = []
        self.finals: dict[str, list[CaptionFrame]] = {}

    def emit(self, frame: AnyFrame) -> None:
        if not isinstance(frame, CaptionFrame):
            return
        now = time.monotonic() - self.clock
        if frame.type == "partial":
            self.partial_latency.append(now - frame.end)
        else:
            self.finals.setdefault(frame.participant, []).append(frame)
            if frame.words:
                self.final_latency.append(now - frame.words[-1].end)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(float(np.percentile(values, q)), 3)


def usage() -> tuple[float, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime, time.monotonic()


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def run_ours(participants: int, talkers: int, seconds: float) -> dict[str, object]:
    tracks = build_tracks(participants, talkers, seconds)
    with TemporaryDirectory() as data:
        settings = load_settings(data_dir=Path(data))
        sink = TimingSink()
        runtime = await LiveRuntime.create(settings, sink, engine=_engine())
        call = CallSession(runtime, "bench")
        await call.start()
        streams = [call.add_participant(f"p{i}", offset=0.0) for i in range(participants)]
        cpu0, wall0 = usage()
        sink.clock = time.monotonic()
        lag_max = 0.0
        for index, begin in enumerate(range(0, tracks[0].samples.size, CHUNK)):
            for stream, track in zip(streams, tracks, strict=True):
                stream.push(track.samples[begin : begin + CHUNK])
            due = sink.clock + (index + 1) * CHUNK / 16000
            lag_max = max(lag_max, time.monotonic() - due)
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        fed = time.monotonic()
        await call.end("bench")
        drain = time.monotonic() - fed
        cpu1, wall1 = usage()
        await runtime.aclose()
    reference = [" ".join(u.text for u in t.utterances) for t in tracks[:talkers]]
    hypothesis = [" ".join(f.text for f in sink.finals.get(f"p{i}", [])) for i in range(talkers)]
    return {
        "participants": participants,
        "talkers": talkers,
        "audio_seconds": seconds,
        "realtime_held": lag_max < 0.5 and drain < 3.0,
        "feed_lag_max_s": round(lag_max, 3),
        "drain_after_end_s": round(drain, 3),
        "partial_p50_s": pct(sink.partial_latency, 50),
        "partial_p95_s": pct(sink.partial_latency, 95),
        "partials": len(sink.partial_latency),
        "final_p50_s": pct(sink.final_latency, 50),
        "final_p95_s": pct(sink.final_latency, 95),
        "finals": len(sink.final_latency),
        "cpu_cores": round((cpu1 - cpu0) / (wall1 - wall0), 2),
        "rss_mb": round(rss_mb(), 1),
        "wer": round(
            statistics.mean(wer(r, h) for r, h in zip(reference, hypothesis, strict=True)), 4
        ),
    }


async def run_naive(participants: int, talkers: int, seconds: float) -> dict[str, object]:
    """Each utterance (true boundaries) transcribed with the same model once it has ended."""
    tracks = build_tracks(participants, talkers, seconds)
    engine = _engine()
    pool = ThreadPoolExecutor(2)
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    texts: dict[int, list[str]] = {}
    clock = time.monotonic()
    cpu0, wall0 = usage()

    async def one(index: int, utterance: Utterance) -> None:
        await asyncio.sleep(max(0.0, clock + utterance.end - time.monotonic()))
        audio = tracks[index].samples[int(utterance.start * 16000) : int(utterance.end * 16000)]
        text, _, _ = await loop.run_in_executor(
            pool, engine.decode, audio.astype(np.float32) / 32768, utterance.start, "en"
        )
        latencies.append(time.monotonic() - clock - utterance.end)
        texts.setdefault(index, []).append(text)

    await asyncio.gather(*(one(i, u) for i in range(talkers) for u in tracks[i].utterances))
    cpu1, wall1 = usage()
    pool.shutdown()
    reference = [" ".join(u.text for u in t.utterances) for t in tracks[:talkers]]
    return {
        "participants": participants,
        "peer": "naive: transcribe each utterance after it ends",
        "final_p50_s": pct(latencies, 50),
        "final_p95_s": pct(latencies, 95),
        "first_text_after_speech_start_p50_s": pct(
            [
                lat + u.end - u.start
                for lat, u in zip(
                    latencies, [u for t in tracks[:talkers] for u in t.utterances], strict=False
                )
            ],
            50,
        ),
        "cpu_cores": round((cpu1 - cpu0) / (wall1 - wall0), 2),
        "wer": round(
            statistics.mean(wer(r, " ".join(texts.get(i, []))) for i, r in enumerate(reference)), 4
        ),
    }


@cache
def _engine() -> WhisperChunkedEngine:
    engine = load_engine("whisper-tiny.en", load_settings())
    assert isinstance(engine, WhisperChunkedEngine)
    return engine


def main(participants: list[int], talkers: int, seconds: float, out: str | None) -> None:
    results = []
    for count in participants:
        ours = asyncio.run(run_ours(count, talkers, seconds))
        print(json.dumps({"system": "roomscribe", **ours}), flush=True)
        results.append({"system": "roomscribe", **ours})
    naive = asyncio.run(run_naive(max(participants), talkers, seconds))
    print(json.dumps({"system": "naive", **naive}), flush=True)
    results.append({"system": "naive", **naive})
    if out:
        Path(out).write_text(json.dumps(results, indent=2))
