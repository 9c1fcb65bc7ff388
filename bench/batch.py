"""`roomscribe bench batch`: a generated four-speaker meeting through the post-call and batch
code paths.

The same run measures (wall time excludes loading models, which every system does once):

* ``postcall``: the four tracks written as a recorded call and re-transcribed by
  :func:`pipeline.postcall.run_postcall`, as the worker does after a call;
* ``batch``: the mix through :func:`pipeline.batch.run_batch` with diarization, once with
  ``speakers_expected=4`` and once with the count unknown;
* ``peer``: plain faster-whisper ``transcribe`` of the mix with the same model;
* ``postcall`` again with greedy decoding (beam 1) instead of the configured beam.

WER is scored on the pooled words against the script, figures spelled out first. Speaker
accuracy is the fraction of recognized words whose speaker is the one speaking at the word's
midpoint (diarization labels mapped one-to-one to participants for the best agreement).
"""

import asyncio
import io
import json
import os
import platform
import shutil
import tempfile
import time
import wave
from collections.abc import Sequence
from itertools import permutations
from pathlib import Path
from typing import Any, cast

import jiwer
import numpy as np
from faster_whisper import WhisperModel

from bench.meeting import VOICES, Meeting, build_meeting, spell_numbers
from bench.scoring import diarization_error_rate, normalize, wer
from config import load_settings
from config.settings import Settings
from engines.diarization import Diarizer, Turn, default_model_dir
from engines.diarization_export import prepare_diarization
from engines.models import resolve
from engines.whisper_batch import WhisperModels
from pipeline.audio_io import SAMPLE_RATE
from pipeline.batch import run_batch
from pipeline.jobs import JobContext, JobKind, JobOptions, JobRecord, JobSource, JobStore
from pipeline.postcall import run_postcall
from pipeline.recorder import CallRecord, CallRecorder
from protocol.transcript import Transcript

MODEL = "whisper-base"
TEXTS = ("hypothesis", "reference")  # kept in --out only
TOLERANCE_S = 0.3


class _RecordingDiarizer:
    """The diarizer the batch job uses, keeping the turns of its last run for scoring."""

    def __init__(self, diarizer: Diarizer) -> None:
        self.diarizer = diarizer
        self.turns: list[Turn] = []

    def diarize(self, samples: np.ndarray, speakers_expected: int | None = None) -> list[Turn]:
        self.turns = self.diarizer.diarize(samples, speakers_expected)
        return self.turns


class _UploadFiles:
    """Stands in for the job store's file half: hands the batch job its uploaded audio and the
    post-call job the recorded call's files, and keeps what the job stores (``turns.json``)."""

    def __init__(self, audio: bytes, calls_dir: Path | None = None) -> None:
        self.audio = audio
        self.calls_dir = calls_dir
        self.stored: dict[str, bytes] = {}

    async def get_file(self, job_id: str, name: str) -> bytes:
        return self.stored.get(name, self.audio)

    async def put_file(self, job_id: str, name: str, data: bytes) -> None:
        self.stored[name] = data

    async def download_call_file(self, call_id: str, name: str, path: Path) -> None:
        assert self.calls_dir is not None
        shutil.copyfile(self.calls_dir / call_id / name, path)


def wav_bytes(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(samples.astype("<i2").tobytes())
    return buffer.getvalue()


def write_call(meeting: Meeting, calls_dir: Path, call_id: str) -> CallRecord:
    """The meeting recorded as the live path records a call (every track from time 0)."""
    recorder = CallRecorder(calls_dir, call_id, "bench-room")
    names = {voice.participant: voice.name for voice in VOICES}
    for participant, samples in meeting.tracks.items():
        track = recorder.track(participant, names.get(participant), None, 0.0)
        track.write(samples)
        track.close()
    return recorder.close("ended")


def _context(
    settings: Settings,
    models: WhisperModels,
    diarizer: Diarizer,
    record: JobRecord,
    audio: bytes = b"",
) -> JobContext:
    return JobContext(
        record=record,
        settings=settings,
        store=cast(JobStore, _UploadFiles(audio, settings.calls_dir)),
        models=models,
        progress=lambda fraction, message: None,
        diarizer=lambda: diarizer,
    )


def _record(kind: JobKind, source: JobSource, options: JobOptions) -> JobRecord:
    now = time.time()
    return JobRecord(
        id=f"bench-{kind.value}",
        kind=kind,
        created_at=now,
        updated_at=now,
        source=source,
        options=options,
    )


def _words(transcript: Transcript) -> list[tuple[float, str]]:
    """(midpoint, speaker) of every recognized word."""
    return [
        ((w.start + w.end) / 2, segment.speaker)
        for segment in transcript.segments
        for w in segment.words
    ]


def per_speaker_wer(meeting: Meeting, transcript: Transcript) -> float:
    """Errors over all words, each speaker's words scored against their own lines: one
    track's segment may span other speakers' turns, so pooled reading order is not speaking
    order."""
    references, hypotheses = [], []
    for participant in meeting.tracks:
        own = [s.text for s in transcript.segments if s.speaker == participant]
        lines = [u.text for u in meeting.utterances if u.participant == participant]
        references.append(normalize(" ".join(lines)))
        hypotheses.append(normalize(spell_numbers(" ".join(own))))
    return float(jiwer.wer(references, hypotheses))


def speaker_accuracy(meeting: Meeting, words: Sequence[tuple[float, str]]) -> float:
    """Fraction of words credited to someone speaking at their midpoint, under the one-to-one
    label mapping that credits most words (identity when labels are participant ids)."""
    participants = list(meeting.tracks)
    labels = sorted({speaker for _, speaker in words})
    hits = np.zeros((len(labels), len(participants)), dtype=np.int64)
    for at, speaker in words:
        for u in meeting.utterances:
            if u.start - TOLERANCE_S <= at <= u.end + TOLERANCE_S:
                hits[labels.index(speaker), participants.index(u.participant)] += 1
    if not words:
        return 0.0
    if set(labels) <= set(participants):
        best = sum(int(hits[i, participants.index(label)]) for i, label in enumerate(labels))
    elif len(labels) <= len(participants):
        best = max(
            sum(int(hits[i, j]) for i, j in enumerate(chosen))
            for chosen in permutations(range(len(participants)), len(labels))
        )
    else:
        best = max(
            sum(int(hits[i, j]) for j, i in enumerate(chosen))
            for chosen in permutations(range(len(labels)), len(participants))
        )
    return best / len(words)


def _score(meeting: Meeting, text: str, wall: float) -> dict[str, Any]:
    return {
        "wall_s": round(wall, 1),
        "rtf": round(wall / meeting.duration, 3),
        "wer": round(wer(meeting.reference_text(), spell_numbers(text)), 4),
        "hypothesis": text,
    }


async def bench_postcall(
    meeting: Meeting,
    settings: Settings,
    models: WhisperModels,
    diarizer: Diarizer,
    beam_size: int | None = None,
    model: str = MODEL,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="roomscribe-bench-") as tmp:
        local = settings.model_copy(update={"data_dir": Path(tmp)})
        call = write_call(meeting, local.calls_dir, "bench-call")
        record = _record(
            JobKind.POSTCALL,
            JobSource(type="call", call_id=call.call_id),
            JobOptions(model=model, beam_size=beam_size),
        )
        began = time.perf_counter()
        transcript = await run_postcall(_context(local, models, diarizer, record))
        wall = time.perf_counter() - began
    return {
        "system": "postcall",
        "beam_size": beam_size or settings.postcall.beam_size,
        **_score(meeting, " ".join(s.text for s in transcript.segments), wall),
        "wer_per_speaker": round(per_speaker_wer(meeting, transcript), 4),
        "speaker_accuracy": round(speaker_accuracy(meeting, _words(transcript)), 4),
        "segments": len(transcript.segments),
    }


async def bench_batch(
    meeting: Meeting,
    settings: Settings,
    models: WhisperModels,
    diarizer: Diarizer,
    speakers_expected: int | None,
    diarize: bool = True,
    model: str = MODEL,
) -> dict[str, Any]:
    record = _record(
        JobKind.BATCH,
        JobSource(type="upload", filename="meeting.wav"),
        JobOptions(model=model, diarize=diarize, speakers_expected=speakers_expected),
    )
    recording = _RecordingDiarizer(diarizer)
    ctx = _context(settings, models, cast(Diarizer, recording), record, wav_bytes(meeting.mix))
    began = time.perf_counter()
    transcript = await run_batch(ctx)
    wall = time.perf_counter() - began
    turns = [(t.start, t.end, t.speaker) for t in recording.turns]
    reference = meeting.reference_turns()
    return {
        "system": "batch",
        "diarize": diarize,
        "speakers_expected": speakers_expected,
        **_score(meeting, " ".join(s.text for s in transcript.segments), wall),
        "speaker_accuracy": round(speaker_accuracy(meeting, _words(transcript)), 4),
        "speakers_found": len({speaker for _, _, speaker in turns}),
        "der": round(diarization_error_rate(reference, turns), 4) if turns else None,
        "der_collar": round(diarization_error_rate(reference, turns, collar=0.25), 4)
        if turns
        else None,
    }


def bench_peer(meeting: Meeting, model_path: Path, beam_size: int) -> dict[str, Any]:
    model = WhisperModel(str(model_path), device="cpu", compute_type="int8")
    audio = meeting.mix.astype(np.float32) / 32768.0
    began = time.perf_counter()
    segments, _ = model.transcribe(audio, beam_size=beam_size, vad_filter=True)
    text = " ".join(s.text.strip() for s in segments)
    wall = time.perf_counter() - began
    return {"system": "peer", **_score(meeting, text, wall)}


def _diarizer(settings: Settings) -> Diarizer:
    model_dir = default_model_dir(settings.data_dir)
    return Diarizer(prepare_diarization(model_dir))


def _machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "loadavg": Path("/proc/loadavg").read_text().strip(),
    }


def main(minutes: float, out: str | None) -> None:
    settings = load_settings()
    results: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        print(json.dumps({k: v for k, v in row.items() if k not in TEXTS}), flush=True)
        results.append(row)

    began = time.perf_counter()
    meeting = build_meeting(minutes)
    words = len(meeting.reference_text().split())
    emit(
        {
            "system": "meeting",
            "duration_s": meeting.duration,
            "utterances": len(meeting.utterances),
            "words": words,
            "generate_s": round(time.perf_counter() - began, 1),
            "voices": [v.espeak for v in VOICES],
            "reference": meeting.reference_text(),
            **_machine(),
        }
    )
    models = WhisperModels(settings.data_dir)
    models.get(MODEL)
    diarizer = _diarizer(settings)
    emit(asyncio.run(bench_postcall(meeting, settings, models, diarizer)))
    for speakers in (4, None):
        emit(asyncio.run(bench_batch(meeting, settings, models, diarizer, speakers)))
    model_path = Path(resolve(MODEL, settings.data_dir).path)
    emit(bench_peer(meeting, model_path, beam_size=5))  # faster-whisper's own default
    # The same pass with greedy decoding (and a warm model): what beam search costs.
    emit(asyncio.run(bench_postcall(meeting, settings, models, diarizer, beam_size=1)))
    emit({"system": "end", **_machine()})
    print(summary(results), flush=True)
    if out:
        Path(out).write_text(json.dumps(results, indent=2))


def summary(results: list[dict[str, Any]]) -> str:
    rows = [r for r in results if r["system"] in ("postcall", "batch", "peer")]
    lines = [
        f"{'system':<22} {'wall s':>8} {'RTF':>7} {'WER':>7} {'WER/spk':>8} {'spk acc':>8} "
        f"{'DER':>7}"
    ]
    for row in rows:
        name = row["system"]
        if name == "postcall":
            name = f"postcall beam={row['beam_size']}"
        if name == "batch":
            name = f"batch speakers={row['speakers_expected'] or '?'}"
        acc = row.get("speaker_accuracy")
        der = row.get("der")
        own = row.get("wer_per_speaker")
        lines.append(
            f"{name:<22} {row['wall_s']:>8} {row['rtf']:>7} {row['wer']:>7.1%} "
            f"{'' if own is None else f'{own:.1%}':>8} "
            f"{'' if acc is None else f'{acc:.1%}':>8} {'' if der is None else f'{der:.1%}':>7}"
        )
    return "\n".join(lines)
