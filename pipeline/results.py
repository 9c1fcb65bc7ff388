"""The common tail of every job: casing, redaction, summary, then the stored result files."""

import asyncio
from typing import Any

from config.settings import Settings
from engines.casing import normalize_casing
from engines.llm import summarize_with
from engines.redaction import redact_transcript
from pipeline.exports import ExportFormat, render
from pipeline.jobs import JobRecord, JobStore
from protocol.transcript import Transcript

EXPORT_FORMATS: tuple[ExportFormat, ...] = ("json", "srt", "vtt", "txt")


def redaction_kinds(redact_pii: bool | list[str]) -> list[Any] | None:
    """None: no redaction; []: every kind the redactor knows; else the kinds named."""
    if redact_pii is True:
        return []
    if redact_pii is False or not redact_pii:
        return None
    return list(redact_pii)


async def finish(transcript: Transcript, record: JobRecord, settings: Settings) -> Transcript:
    transcript = await asyncio.to_thread(normalize_casing, transcript)
    kinds = redaction_kinds(record.options.redact_pii)
    if kinds:
        transcript = await asyncio.to_thread(redact_transcript, transcript, kinds)
    elif kinds is not None:
        transcript = await asyncio.to_thread(redact_transcript, transcript)
    if record.options.summarize:
        summary = await asyncio.to_thread(summarize_with, transcript, settings)
        transcript = transcript.model_copy(update={"summary": summary})
    return transcript


async def store_results(store: JobStore, job_id: str, transcript: Transcript) -> list[str]:
    """Write the transcript and every export under ``job_id``; returns the file names."""
    names = []
    for fmt in EXPORT_FORMATS:
        name = f"transcript.{fmt}"
        if fmt == "json":
            await store.put_transcript(job_id, transcript)
        else:
            await store.put_file(job_id, name, render(transcript, fmt).encode())
        names.append(name)
    return names
