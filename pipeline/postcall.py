"""The post-call re-pass: each speaker's recording through the stronger model, merged by time.

A re-pass segment that overlaps live finals of the same participant takes over their
``segment_id`` (as ``Segment.id``, all of them in ``live_segment_ids``), so a consumer can
replace the live captions in place. Each live final goes to the one re-pass segment it
overlaps most, which keeps segment ids unique.
"""

import asyncio
import tempfile
from collections.abc import Callable
from pathlib import Path

from config.settings import Settings
from engines.whisper_batch import BatchResult
from pipeline.batch import decode, recognize, to_words
from pipeline.jobs import (
    JobContext,
    JobFailure,
    JobKind,
    JobNotFoundError,
    JobOptions,
    JobRecord,
    JobSource,
    JobStore,
)
from pipeline.recorder import CallRecord, ParticipantRecord
from protocol.errors import ErrorCode
from protocol.frames import CaptionFrame
from protocol.transcript import Segment, Speaker, SpeechSpan, Transcript

_Piece = tuple[ParticipantRecord, Segment]
NEAREST_S = 1.0


async def fetch_call(store: JobStore, call_id: str, directory: Path) -> CallRecord:
    """The handed-over call's files from the object store into ``directory``."""
    if "/" in call_id or call_id in ("", ".", ".."):
        raise JobFailure(ErrorCode.NOT_FOUND, f"no recorded call {call_id!r}")
    try:
        await store.download_call_file(call_id, "call.json", directory / "call.json")
    except JobNotFoundError:
        raise JobFailure(
            ErrorCode.NOT_FOUND, f"no recorded call {call_id!r} in the object store"
        ) from None
    call = CallRecord.load(directory)
    for name in call.files[1:]:
        try:
            await store.download_call_file(call_id, name, directory / name)
        except JobNotFoundError:
            (directory / name).unlink(missing_ok=True)  # a participant without a sample
    return call


def _overlap(a_start: float, a_end: float, b_start: float, b_end: float) -> float:
    """Seconds two spans share; negative: the gap between them."""
    return min(a_end, b_end) - max(a_start, b_start)


def attach_live_ids(pieces: list[_Piece], finals: list[CaptionFrame]) -> dict[int, list[str]]:
    """Index in ``pieces`` -> live segment ids it covers (each live id given out once).

    A live final that overlaps no re-pass segment goes to the nearest one of its speaker
    within ``NEAREST_S`` (the live and the re-pass VAD cut differently); further away it is
    left out (the re-pass heard no speech there).
    """
    claimed: dict[int, list[tuple[float, str]]] = {}
    for final in finals:
        if final.type != "final" or not final.text.strip():
            continue
        best, best_overlap = -1, -NEAREST_S
        for index, (participant, segment) in enumerate(pieces):
            if participant.participant != final.participant:
                continue
            overlap = _overlap(segment.start, segment.end, final.start, final.end)
            if overlap > best_overlap:
                best, best_overlap = index, overlap
        if best >= 0:
            claimed.setdefault(best, []).append((final.start, final.segment_id))
    return {index: [sid for _, sid in sorted(ids)] for index, ids in claimed.items()}


async def run_postcall(ctx: JobContext) -> Transcript:
    with tempfile.TemporaryDirectory(prefix="roomscribe-call-") as directory:
        call = await fetch_call(ctx.store, ctx.record.source.call_id or "", Path(directory))
        return await _repass(ctx, call)


async def _repass(ctx: JobContext, call: CallRecord) -> Transcript:
    model = ctx.record.options.model or ctx.settings.postcall.model
    count = max(len(call.participants), 1)
    done = [0.0] * count

    def progress(number: int) -> Callable[[float], None]:
        def report(fraction: float) -> None:
            done[number] = fraction
            ctx.progress(sum(done) / count, "transcribing the speakers")

        return report

    async def speaker(number: int, participant: ParticipantRecord) -> BatchResult | None:
        path = call.audio_path(participant)
        if not path.is_file():
            return None
        try:
            samples = await decode(path, path.name)
        except JobFailure as exc:
            if exc.code == ErrorCode.EMPTY_AUDIO:
                return None  # joined and left without a sample
            raise
        return await recognize(
            ctx,
            samples,
            model,
            offset=participant.offset,
            on_progress=progress(number),
            language=participant.language or ctx.record.options.language,
        )

    # speakers side by side: the model runs two calls at once (see WhisperBatch)
    results = await asyncio.gather(*(speaker(n, p) for n, p in enumerate(call.participants)))
    pieces: list[_Piece] = []
    unheard: list[SpeechSpan] = []
    duration = 0.0
    language: str | None = None
    for participant, result in zip(call.participants, results, strict=True):
        if result is None:
            continue
        language = language or result.language
        duration = max(duration, participant.offset + result.duration)
        unheard += [
            SpeechSpan(speaker=participant.participant, start=a, end=b) for a, b in result.uncovered
        ]
        for seg in result.segments:
            pieces.append(
                (
                    participant,
                    Segment(
                        id="",
                        speaker=participant.participant,
                        start=seg.start,
                        end=seg.end,
                        text=seg.text,
                        words=to_words(seg),
                    ),
                )
            )
    pieces.sort(key=lambda piece: (piece[1].start, piece[1].speaker))
    live = attach_live_ids(pieces, call.live_finals())
    segments = []
    for index, (_, segment) in enumerate(pieces):
        ids = live.get(index, [])
        segments.append(
            segment.model_copy(
                update={
                    "id": ids[0] if ids else f"{call.call_id}-r{index:04d}",
                    "live_segment_ids": ids,
                }
            )
        )
    names: dict[str, str | None] = {}
    for participant in call.participants:
        names[participant.participant] = participant.name or names.get(participant.participant)
    return Transcript(
        id=ctx.record.id,
        language=language,
        model=model,
        duration=round(duration, 3),
        speakers=[Speaker(id=pid, name=name) for pid, name in names.items()],
        segments=segments,
        unrecognized_speech=unheard,
    )


async def submit_postcall(
    store: JobStore,
    settings: Settings,
    call_id: str,
    options: JobOptions | None = None,
    webhook_url: str | None = None,
    job_id: str | None = None,
) -> JobRecord:
    """Queue a post-call job of a handed-over call (``job_id``: the call's own, fixed when
    it opened, so a repeated hand-over queues nothing new)."""
    chosen = options or JobOptions(
        summarize=settings.postcall.summarize, redact_pii=settings.postcall.redact_pii
    )
    record = JobRecord.queued(
        JobKind.POSTCALL,
        JobSource(type="call", call_id=call_id),
        chosen,
        webhook_url or settings.postcall.webhook_url,
    )
    if job_id is not None:
        record = record.model_copy(update={"id": job_id})
    return await store.submit(record)
