"""`roomscribe bench accuracy`: every path of roomscribe beside plain faster-whisper on the
same audio, in one process: the dev sets of :mod:`bench.devsets` plus the pyannote phone call.

Systems per set:

* ``plain <model>``: ``WhisperModel.transcribe(track, beam_size=5, vad_filter=True)`` per
  track (what a user would do instead), tiny.en (the live model) and base (the post-call one);
  ``plain base mix``: the same on the mix;
* ``live realtime`` / ``live max``: the tracks through the live pipeline (``LiveRuntime`` +
  ``CallSession``, as ``roomscribe live`` composes it), fed at real time and as fast as
  recognition goes; finals scored, stable-prefix violations counted, word-commit latency
  (a word's end to the first frame where it is inside ``stable_chars`` or final) measured at
  real time;
* ``postcall``: the tracks as a recorded call through :func:`pipeline.postcall.run_postcall`;
* ``batch``: the mix through :func:`pipeline.batch.run_batch`, without and with diarization
  (speaker count given and unknown): speakers found, DER.

WER per speaker is each speaker's words against their own lines; "lost" counts reference
words the output deleted (jiwer deletions).
"""

import asyncio
import json
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
from faster_whisper import WhisperModel

from bench.batch import _diarizer, _machine, bench_batch, bench_postcall
from bench.devsets import PYANNOTE_SPEAKERS, dev_meeting, librivox, split_by_rttm
from bench.meeting import Meeting, Utterance, spell_numbers
from bench.pyannote_sample import pyannote_sample, read_stm
from bench.scoring import normalize
from config import load_settings
from config.settings import Settings
from engines.models import resolve
from engines.whisper_batch import WhisperModels
from pipeline.audio_io import decode_file
from pipeline.call import CallSession
from pipeline.runtime import LiveRuntime
from pipeline.sink import CollectingSink
from pipeline.speaker_stream import SpeakerStream
from protocol import CaptionFrame, ErrorFrame

LIVE_MODEL = "whisper-tiny.en"
POSTCALL_MODEL = "whisper-base"
STEP_S = 0.02


@dataclass
class Score:
    wer: float
    lost: int
    words: int


def score(references: list[str], hypotheses: list[str]) -> Score:
    refs = [normalize(r) for r in references]
    hyps = [normalize(spell_numbers(h)) for h in hypotheses]
    kept = [(r, h) for r, h in zip(refs, hyps, strict=True) if r]
    out = jiwer.process_words([r for r, _ in kept], [h for _, h in kept])
    words = sum(len(r.split()) for r, _ in kept)
    return Score(round(out.wer, 4), out.deletions, words)


def own_lines(meeting: Meeting, participant: str) -> str:
    return " ".join(u.text for u in meeting.utterances if u.participant == participant)


def per_speaker(meeting: Meeting, texts: dict[str, str]) -> dict[str, Any]:
    speakers = list(meeting.tracks)
    each = {p: score([own_lines(meeting, p)], [texts.get(p, "")]).wer for p in speakers}
    pooled = score([own_lines(meeting, p) for p in speakers], [texts.get(p, "") for p in speakers])
    return {"wer_per_speaker": each, "wer": pooled.wer, "lost": pooled.lost}


def librivox_set() -> Meeting:
    gap = np.zeros(16000, np.int16)
    parts, utterances, at = [gap], [], 1.0
    for clip in librivox():
        utterances.append(Utterance("reader", at, at + clip.samples.size / 16000, clip.text))
        parts += [clip.samples, gap]
        at += clip.samples.size / 16000 + 1.0
    track = np.concatenate(parts)
    return Meeting(round(at, 3), utterances, {"reader": track}, track)


def pyannote_set() -> Meeting:
    sample = pyannote_sample()
    mix = decode_file(sample.wav)
    utterances = [
        Utterance(u.speaker.lower(), u.start, u.end, u.text)
        for u in read_stm(sample.stm)
        if u.speaker.lower() in PYANNOTE_SPEAKERS.values() and u.text
    ]
    return Meeting(mix.size / 16000, utterances, split_by_rttm(mix, sample.rttm), mix)


def plain(model: WhisperModel, audio: np.ndarray) -> tuple[str, float]:
    began = time.perf_counter()
    segments, _ = model.transcribe(audio.astype(np.float32) / 32768, beam_size=5, vad_filter=True)
    text = " ".join(s.text.strip() for s in segments)
    return text, time.perf_counter() - began


class TimedSink(CollectingSink):
    """Frames with the monotonic time each arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: list[float] = []

    def emit(self, frame: Any) -> None:
        super().emit(frame)
        self.arrived.append(time.monotonic())


async def feed(
    streams: dict[str, SpeakerStream],
    tracks: dict[str, np.ndarray],
    realtime: bool,
    step_s: float = STEP_S,
) -> None:
    """Every track into its stream in ``step_s`` pieces: on a real-time clock, or each piece
    as soon as recognition has caught up with the last."""
    step = int(step_s * 16000)
    loop = asyncio.get_running_loop()
    began = loop.time()
    for index, begin in enumerate(range(0, max(t.size for t in tracks.values()), step)):
        for participant, stream in streams.items():
            stream.push(tracks[participant][begin : begin + step])
        if realtime:
            await asyncio.sleep(max(0.0, began + (index + 1) * step_s - loop.time()))
        else:
            await asyncio.sleep(0)
            for stream in streams.values():
                await stream.caught_up()


async def live(
    meeting: Meeting, settings: Settings, realtime: bool
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    if not realtime:
        live_settings = settings.live.model_copy(update={"max_load": 1.0})
        settings = settings.model_copy(update={"live": live_settings})
    sink = TimedSink()
    runtime = await LiveRuntime.create(settings, sink)
    cpu_before = _cpu_s()
    try:
        call = CallSession(runtime, "bench")
        await call.start()
        streams = {p: call.add_participant(p, None, offset=0.0) for p in meeting.tracks}
        clock = time.monotonic()
        await feed(streams, meeting.tracks, realtime)
        await call.end("done")
    finally:
        await runtime.aclose()
    wall = time.monotonic() - clock
    cpu = _cpu_s() - cpu_before
    captions = [
        (f, at)
        for f, at in zip(sink.frames, sink.arrived, strict=True)
        if isinstance(f, CaptionFrame)
    ]
    finals: dict[str, list[str]] = {p: [] for p in meeting.tracks}
    for frame, _ in captions:
        if frame.type == "final":
            finals[frame.participant].append(frame.text)
    errors = [f.code for f in sink.frames if isinstance(f, ErrorFrame)]
    row = {
        **per_speaker(meeting, {p: " ".join(t) for p, t in finals.items()}),
        "error_frames": errors,
        "hypothesis": {p: " ".join(t) for p, t in finals.items()},
        "stable_violations": len(stable_violations([f for f, _ in captions])),
        "cores": round(cpu / wall, 2),
        "rtf": round(wall / meeting.duration, 3),
    }
    if realtime:
        latencies = commit_latencies(captions, clock)
        row["commit_p50_s"] = _pct(latencies, 50)
        row["commit_p95_s"] = _pct(latencies, 95)
        row["final_p95_s"] = _pct(final_latencies(captions, clock), 95)
    return row, finals


def _cpu_s() -> float:
    """This process and its ended children (the recognition process, once the runtime
    closed)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def stable_violations(frames: list[CaptionFrame]) -> list[str]:
    """Revisions that changed text an earlier frame of the same segment declared stable."""
    promised: dict[tuple[str, str], str] = {}
    found = []
    for frame in frames:
        key = (frame.participant, frame.segment_id)
        earlier = promised.get(key, "")
        if not frame.text.startswith(earlier):
            found.append(f"{earlier!r} -> {frame.text!r}")
        stable = frame.text[: frame.stable_chars]
        if len(stable) > len(earlier):
            promised[key] = stable
    return found


def commit_latencies(captions: list[tuple[CaptionFrame, float]], clock: float) -> list[float]:
    """Per final word: its end (audio time on the feed's clock) to the first frame of its
    segment whose stable prefix holds it (by word count), or the final."""
    by_segment: dict[tuple[str, str], list[tuple[CaptionFrame, float]]] = {}
    for frame, at in captions:
        by_segment.setdefault((frame.participant, frame.segment_id), []).append((frame, at))
    latencies = []
    for frames in by_segment.values():
        final = next((f for f, _ in frames if f.type == "final"), None)
        if final is None:
            continue
        for index, word in enumerate(final.words):
            for frame, at in frames:
                settled = len(frame.text[: frame.stable_chars].split())
                if frame.type == "final" or settled > index:
                    latencies.append(max(0.0, at - (clock + word.end)))
                    break
    return latencies


def final_latencies(captions: list[tuple[CaptionFrame, float]], clock: float) -> list[float]:
    return [at - (clock + f.end) for f, at in captions if f.type == "final"]


async def postcall_and_batch(
    meeting: Meeting, settings: Settings, models: WhisperModels, speakers: int
) -> list[dict[str, Any]]:
    diarizer = _diarizer(settings)
    rows = []
    post = await bench_postcall(meeting, settings, models, diarizer, model=POSTCALL_MODEL)
    # each speaker's words against their own lines (segments of tracks interleave in time)
    post["wer"] = post.pop("wer_per_speaker")
    rows.append({"system": "postcall", **_keep(post), "lost": _lost(meeting, post)})
    for diarize, expected in ((False, None), (True, speakers), (True, None)):
        row = await bench_batch(
            meeting, settings, models, diarizer, expected, diarize, model=POSTCALL_MODEL
        )
        name = "batch" if not diarize else f"batch diarized n={expected or '?'}"
        rows.append({"system": name, **_keep(row), "lost": _lost(meeting, row)})
    return rows


def _lost(meeting: Meeting, row: dict[str, Any]) -> int:
    return score([meeting.reference_text()], [row["hypothesis"]]).lost


def _keep(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("system", "hypothesis")}


def run_set(
    name: str,
    meeting: Meeting,
    settings: Settings,
    models: WhisperModels,
    live_only: bool = False,
    offline_only: bool = False,
) -> list[dict]:
    rows: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        row = {"set": name, **row}
        print(json.dumps({k: v for k, v in row.items() if k != "hypothesis"}), flush=True)
        rows.append(row)

    for model_name in (LIVE_MODEL,) if live_only else (LIVE_MODEL, POSTCALL_MODEL):
        model = WhisperModel(
            str(resolve(model_name, settings.data_dir).path), device="cpu", compute_type="int8"
        )
        texts, wall = {}, 0.0
        for participant, track in meeting.tracks.items():
            texts[participant], seconds = plain(model, track)
            wall += seconds
        emit(
            {
                "system": f"plain {model_name}",
                **per_speaker(meeting, texts),
                "rtf": round(wall / meeting.duration, 3),
            }
        )
        if model_name == POSTCALL_MODEL and len(meeting.tracks) > 1:
            text, seconds = plain(model, meeting.mix)
            pooled = score([meeting.reference_text()], [text])
            emit(
                {
                    "system": f"plain {model_name} mix",
                    "wer": pooled.wer,
                    "lost": pooled.lost,
                    "rtf": round(seconds / meeting.duration, 3),
                }
            )
    if not offline_only:
        _live_rows(meeting, settings, emit)
    if not live_only:
        for row in asyncio.run(postcall_and_batch(meeting, settings, models, len(meeting.tracks))):
            emit(row)
    return rows


def _live_rows(
    meeting: Meeting, settings: Settings, emit: Callable[[dict[str, Any]], None]
) -> None:
    realtime, fast_finals = None, None
    for is_realtime in (True, False):
        with tempfile.TemporaryDirectory(prefix="roomscribe-accuracy-") as tmp:
            local = settings.model_copy(update={"data_dir": Path(tmp)})
            row, finals = asyncio.run(live(meeting, local, is_realtime))
        if is_realtime:
            realtime = finals
        else:
            fast_finals = finals
        system = "live realtime" if is_realtime else "live max"
        if settings.live.final_model:
            system += f" finals={settings.live.final_model}"
        emit({"system": system, **row})
    assert realtime is not None and fast_finals is not None
    differing = sum(
        normalize(a) != normalize(b)
        for p in meeting.tracks
        for a, b in zip(realtime[p], fast_finals[p], strict=False)
    ) + sum(abs(len(realtime[p]) - len(fast_finals[p])) for p in meeting.tracks)
    emit({"system": "live realtime vs max", "differing_finals": differing})


def main(
    sets: list[str],
    out: str | None,
    final_model: str | None = None,
    live_only: bool = False,
    offline_only: bool = False,
) -> None:
    """``final_model``: live finals from this model (two-pass live) in the live rows;
    ``live_only``: plain tiny.en and the live rows, no post-call or batch; ``offline_only``:
    the plain, post-call and batch rows, no live."""
    settings = load_settings()
    if final_model:
        live_settings = settings.live.model_copy(update={"final_model": final_model})
        settings = settings.model_copy(update={"live": live_settings})
    models = WhisperModels(settings.data_dir)
    builders = {
        "librivox": librivox_set,
        "pyannote": pyannote_set,
        "meeting3": lambda: dev_meeting(3),
        "meeting4": lambda: dev_meeting(4),
    }
    print(json.dumps({"system": "machine", **_machine()}), flush=True)
    results = []
    for name in sets:
        results += run_set(name, builders[name](), settings, models, live_only, offline_only)
    print(json.dumps({"system": "end", **_machine()}), flush=True)
    print(summary(results))
    if out:
        Path(out).write_text(json.dumps(results, indent=2))


def summary(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'set':<9} {'system':<24} {'WER':>6} {'per speaker':<28} {'lost':>4} {'spk':>3} {'DER':>6} {'viol':>4} {'commit p50/p95':>14} {'RTF':>6}"
    ]
    for row in rows:
        if "wer" not in row:
            if "differing_finals" in row:
                lines.append(
                    f"{row['set']:<9} {row['system']:<24} differing finals: {row['differing_finals']}"
                )
            continue
        each = row.get("wer_per_speaker") or {}
        per = " ".join(f"{v:.1%}" for v in each.values()) if isinstance(each, dict) else ""
        commit = (
            f"{row['commit_p50_s']}/{row['commit_p95_s']}"
            if row.get("commit_p95_s") is not None
            else ""
        )
        der = row.get("der")
        lines.append(
            f"{row['set']:<9} {row['system']:<24} {row['wer']:>6.1%} {per:<28} {row.get('lost', ''):>4} "
            f"{row.get('speakers_found', ''):>3} {'' if der is None else f'{der:.1%}':>6} "
            f"{row.get('stable_violations', ''):>4} {commit:>14} {row.get('rtf', ''):>6}"
        )
    return "\n".join(lines)
