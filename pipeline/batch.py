"""A batch job: one mixed recording (upload or URL) -> decode -> VAD + recognizer -> speakers."""

import asyncio
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np

from engines.base import EngineError, ModelNotFoundError
from engines.diarization import split_segments
from engines.whisper_batch import BatchResult, BatchSegment
from pipeline.audio_io import (
    SAMPLE_RATE,
    AudioDecodeError,
    decode_file,
    ogg_ends_cleanly,
    wav_header_seconds,
)
from pipeline.jobs import JobContext, JobFailure, JobNotFoundError, SpeakerDiarizer
from pipeline.url_fetch import DownloadError, download
from protocol.errors import ErrorCode
from protocol.frames import Word
from protocol.transcript import Segment, Speaker, SpeechSpan, Transcript

DIARIZATION_UNAVAILABLE = ErrorCode.DIARIZATION_UNAVAILABLE.value
TRUNCATION_RATIO = 0.9


async def source_audio(ctx: JobContext) -> bytes:
    """The job's audio bytes: stored with the job (upload) or fetched from its URL."""
    source = ctx.record.source
    if source.type == "url" and source.url:
        ctx.progress(0.0, "downloading")
        api = ctx.settings.api
        try:
            data = await download(
                source.url,
                int(api.max_download_mb * 1024 * 1024),
                api.download_timeout_s,
                api.allow_private_urls,
            )
        except DownloadError as exc:
            raise JobFailure(exc.code, exc.message) from exc
        await ctx.store.put_file(ctx.record.id, "audio", data)
        return data
    try:
        return await ctx.store.get_file(ctx.record.id, "audio")
    except JobNotFoundError as exc:
        raise JobFailure(ErrorCode.NOT_FOUND, "the job's audio is gone (deleted?)") from exc


def declared_seconds(data: bytes | Path) -> float | None:
    """The duration the container's header states, if it states one."""
    if isinstance(data, bytes):
        head = data[:4096]
    else:
        with data.open("rb") as file:
            head = file.read(4096)
    wav = wav_header_seconds(head)
    if wav is not None:
        return wav
    try:
        with av.open(
            str(data) if isinstance(data, Path) else io.BytesIO(data), mode="r"
        ) as container:
            return None if container.duration is None else container.duration / av.time_base
    except (av.error.FFmpegError, OSError):  # type: ignore[attr-defined]
        return None


def _ogg_cut(data: bytes | Path) -> bool:
    if isinstance(data, bytes):
        if data[:4] != b"OggS":
            return False
        tail = data[-65536:]
    else:
        with data.open("rb") as file:
            if file.read(4) != b"OggS":
                return False
            file.seek(max(0, data.stat().st_size - 65536))
            tail = file.read()
    return ogg_ends_cleanly(tail) is False


def is_truncated(declared: float | None, decoded: float) -> bool:
    return declared is not None and decoded < declared * TRUNCATION_RATIO - 0.25


async def decode(data: bytes | Path, name: str, check_length: bool = False) -> np.ndarray:
    """16 kHz mono int16 from bytes or a file; with ``check_length`` a file that decodes to
    clearly less than its header declares (a truncated upload) fails with INVALID_AUDIO."""
    size = await asyncio.to_thread(os.path.getsize, data) if isinstance(data, Path) else len(data)
    if size == 0:
        raise JobFailure(ErrorCode.EMPTY_AUDIO, f"{name}: the file is empty (0 bytes)")
    source: Path | io.BytesIO = data if isinstance(data, Path) else io.BytesIO(data)
    if isinstance(source, io.BytesIO):
        source.name = name
    try:
        samples = await asyncio.to_thread(decode_file, source)
    except AudioDecodeError as exc:
        raise JobFailure(exc.code, exc.message) from exc
    if check_length:
        declared = await asyncio.to_thread(declared_seconds, data)
        decoded = samples.size / SAMPLE_RATE
        if await asyncio.to_thread(_ogg_cut, data):
            raise JobFailure(
                ErrorCode.INVALID_AUDIO,
                f"{name}: truncated: the Ogg stream ends before its last page "
                f"(only {decoded:.1f} s decode)",
            )
        if is_truncated(declared, decoded):
            assert declared is not None
            raise JobFailure(
                ErrorCode.INVALID_AUDIO,
                f"{name}: truncated: its header declares {declared:.1f} s but only {decoded:.1f} s decode",
            )
    return samples


async def recognize(
    ctx: JobContext,
    samples: np.ndarray,
    model: str,
    offset: float = 0.0,
    share: tuple[float, float] = (0.0, 1.0),
    language: str | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> BatchResult:
    """Run the named model over ``samples`` in a thread; progress maps into ``share`` (or
    goes to ``on_progress`` as the fraction of this audio done)."""
    language = language or ctx.record.options.language
    beam = ctx.record.options.beam_size or ctx.settings.postcall.beam_size
    low, high = share
    report = on_progress or (lambda done: ctx.progress(low + (high - low) * done, "transcribing"))

    def run() -> BatchResult:
        recognizer = ctx.models.get(model)
        return recognizer.transcribe(
            samples,
            language=language,
            beam_size=beam,
            offset=offset,
            on_progress=report,
        )

    try:
        return await asyncio.to_thread(run)
    except ModelNotFoundError as exc:
        raise JobFailure(ErrorCode.MODEL_NOT_FOUND, str(exc)) from exc
    except EngineError as exc:
        raise JobFailure(exc.code, str(exc)) from exc


def to_words(segment: BatchSegment) -> list[Word]:
    return [
        Word(word=w.word, start=w.start, end=w.end, confidence=w.confidence) for w in segment.words
    ]


async def _diarizer(ctx: JobContext) -> SpeakerDiarizer:
    try:
        return await asyncio.to_thread(ctx.diarizer)
    except ModelNotFoundError as exc:
        raise JobFailure(
            DIARIZATION_UNAVAILABLE, f"diarization models are not prepared: {exc}"
        ) from exc


async def run_batch(ctx: JobContext) -> Transcript:
    record = ctx.record
    options = record.options
    name = record.source.filename or record.source.url or "upload"
    diarizer = await _diarizer(ctx) if options.diarize else None  # fail before the long part
    data = await source_audio(ctx)
    samples = await decode(data, name, check_length=not options.allow_truncated)
    declared = await asyncio.to_thread(declared_seconds, data)
    partial = is_truncated(declared, samples.size / SAMPLE_RATE) or _ogg_cut(data)
    ctx.progress(0.05, "decoded")
    model = options.model or ctx.settings.postcall.batch_model
    result = await recognize(ctx, samples, model, share=(0.05, 0.8 if diarizer else 0.95))
    if diarizer is not None:
        ctx.progress(0.8, "diarizing")
        turns = await asyncio.to_thread(diarizer.diarize, samples, options.speakers_expected)
        # kept beside the transcript: how much of a segment its speaker's turns cover
        spans = [{"start": t.start, "end": t.end, "speaker": t.speaker} for t in turns]
        await ctx.store.put_file(record.id, "turns.json", json.dumps(spans).encode())
        parts = [
            (p.speaker, p.start, p.end, p.text, p.words)
            for p in split_segments(turns, result.segments)
        ]
    else:
        parts = [("S1", p.start, p.end, p.text, p.words) for p in result.segments]
    segments = [
        Segment(
            id=f"s{index:04d}",
            speaker=speaker,
            start=start,
            end=end,
            text=text,
            words=[_word(w) for w in words],
        )
        for index, (speaker, start, end, text, words) in enumerate(parts)
    ]
    speakers = sorted({s.speaker for s in segments}, key=lambda s: (len(s), s)) or ["S1"]
    return Transcript(
        id=record.id,
        language=result.language,
        model=result.model,
        duration=round(result.duration, 3),
        speakers=[Speaker(id=speaker) for speaker in speakers],
        segments=segments,
        unrecognized_speech=[SpeechSpan(start=a, end=b) for a, b in result.uncovered],
        partial=partial,
        declared_duration=round(declared, 3) if partial and declared else None,
    )


def _word(word: Any) -> Word:
    return Word(word=word.word, start=word.start, end=word.end, confidence=word.confidence)
