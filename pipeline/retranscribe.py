"""Re-recognize one segment of a finished transcript (e.g. with a stronger model).

The audio comes from the parent job: its stored upload for a batch job, the speaker's own
recording for a post-call job. The segment keeps its id; the result is the whole parent
transcript with that one segment replaced.
"""

import tempfile
from pathlib import Path

import numpy as np

from engines.base import SAMPLE_RATE
from pipeline.batch import decode, recognize, to_words
from pipeline.jobs import JobContext, JobFailure, JobKind, JobNotFoundError
from pipeline.postcall import fetch_call
from protocol.errors import ErrorCode
from protocol.transcript import Segment, Transcript

PAD_S = 0.25


def _cut(samples: np.ndarray, start: float, end: float) -> tuple[np.ndarray, float]:
    first = max(int((start - PAD_S) * SAMPLE_RATE), 0)
    last = min(int((end + PAD_S) * SAMPLE_RATE), samples.size)
    return samples[first:last], first / SAMPLE_RATE


async def _segment_audio(
    ctx: JobContext, kind: JobKind, parent_id: str, call_id: str | None, segment: Segment
) -> tuple[np.ndarray, float]:
    """The segment's audio and the time (in transcript seconds) of its first sample."""
    if kind == JobKind.POSTCALL and call_id:
        with tempfile.TemporaryDirectory(prefix="roomscribe-call-") as directory:
            return await _speaker_audio(ctx, call_id, Path(directory), segment)
    try:
        data = await ctx.store.get_file(parent_id, "audio")
    except JobNotFoundError as exc:
        raise JobFailure(ErrorCode.NOT_FOUND, f"the audio of {parent_id} is gone") from exc
    samples = await decode(data, parent_id)
    return _cut(samples, segment.start, segment.end)


async def _speaker_audio(
    ctx: JobContext, call_id: str, directory: Path, segment: Segment
) -> tuple[np.ndarray, float]:
    call = await fetch_call(ctx.store, call_id, directory)
    for participant in call.participants:
        path = call.audio_path(participant)
        if (
            participant.participant != segment.speaker
            or not path.is_file()
            or participant.offset > segment.start
        ):
            continue
        samples = await decode(path, path.name)
        if participant.offset + samples.size / SAMPLE_RATE < segment.end - PAD_S:
            continue
        piece, at = _cut(
            samples, segment.start - participant.offset, segment.end - participant.offset
        )
        return piece, participant.offset + at
    raise JobFailure(
        ErrorCode.NOT_FOUND, f"no recording of {segment.speaker!r} covers segment {segment.id}"
    )


async def run_retranscribe(ctx: JobContext) -> Transcript:
    source = ctx.record.source
    parent_id, segment_id = source.parent_id or "", source.segment_id or ""
    try:
        parent = await ctx.store.get(parent_id)
        transcript = await ctx.store.get_transcript(parent_id)
    except JobNotFoundError as exc:
        raise JobFailure(ErrorCode.NOT_FOUND, f"no finished transcript {parent_id!r}") from exc
    index = next((i for i, s in enumerate(transcript.segments) if s.id == segment_id), None)
    if index is None:
        raise JobFailure(
            ErrorCode.NOT_FOUND, f"transcript {parent_id} has no segment {segment_id!r}"
        )
    segment = transcript.segments[index]
    samples, at = await _segment_audio(ctx, parent.kind, parent_id, parent.source.call_id, segment)
    model = ctx.record.options.model or ctx.settings.postcall.model
    result = await recognize(ctx, samples, model, offset=at, language=transcript.language)
    words = [word for piece in result.segments for word in to_words(piece)]
    text = " ".join(piece.text for piece in result.segments).strip()
    revised = segment.model_copy(
        update={
            "text": text,
            "words": words,
            "start": words[0].start if words else segment.start,
            "end": words[-1].end if words else segment.end,
        }
    )
    segments = list(transcript.segments)
    segments[index] = revised
    return transcript.model_copy(update={"segments": segments})
