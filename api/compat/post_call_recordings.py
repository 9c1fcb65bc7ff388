"""The post-call transcription API for recordings: ``POST /v1/recordings/{recordingId}/transcribe``
and ``GET /v1/transcriptions/{transcriptionId}``.

A recording is a call this service recorded (its id is the call id, ``GET /v1/calls``); a
transcription is a post-call job over the call's per-participant tracks, in the one job
store. Counts and the duration are strings and ``text`` is ``[00:00:01] Alice: ...`` lines,
as that API answers.
"""

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api.bodies import JsonBody
from api.errors import ApiError, errors
from api.services import Services
from api.transcripts import _checked_language, _json_body, _record, _transcript
from pipeline.exports import to_txt
from pipeline.jobs import JobKind, JobOptions, JobState
from pipeline.postcall import submit_postcall
from protocol.errors import ErrorCode
from protocol.openapi import json_body

router = APIRouter(tags=["compat: post-call recordings"])


class TranscribeRecording(JsonBody):
    model_config = ConfigDict(extra="forbid")

    language: str | None = Field(
        default=None, max_length=16, description="default: the recorded language of each track"
    )


class TranscriptionAccepted(BaseModel):
    transcriptionId: str  # noqa: N815 - that API's field names
    status: Literal["queued", "processing", "completed", "failed"]


class Transcription(TranscriptionAccepted):
    language: str | None = None
    duration: str | None = Field(default=None, description="seconds, as a string")
    segmentCount: str | None = None  # noqa: N815
    text: str | None = Field(default=None, description="[HH:MM:SS] Speaker: text, one a line")
    error: str | None = Field(default=None, description="why it failed")


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


@router.post(
    "/v1/recordings/{recordingId}/transcribe",
    status_code=202,
    response_model=TranscriptionAccepted,
    responses=errors(400, 404, 422),
    openapi_extra={"requestBody": json_body(TranscribeRecording, required=False)},
)
async def transcribe_recording(request: Request, recordingId: str) -> JSONResponse:  # noqa: N803
    """Queue a transcription of a recorded call (its tracks, each through the post-call model)."""
    services = _services(request)
    settings = services.settings
    body: TranscribeRecording = await _json_body(request, TranscribeRecording, optional=True)
    call_id = recordingId
    if "/" in call_id or call_id in (".", "..") or not await services.store.has_call(call_id):
        raise ApiError(404, ErrorCode.NOT_FOUND, f"no recording {call_id!r}")
    options = JobOptions(
        language=_checked_language(settings.postcall.model, body.language),
        summarize=False,
        redact_pii=settings.postcall.redact_pii,
    )
    record = await submit_postcall(services.store, settings, call_id, options)
    services.metrics.jobs_submitted.labels(JobKind.POSTCALL.value).inc()
    accepted = TranscriptionAccepted(transcriptionId=record.id, status=record.status.value)
    return JSONResponse(accepted.model_dump(), status_code=202)


@router.get(
    "/v1/transcriptions/{transcriptionId}",
    response_model=Transcription,
    response_model_exclude_none=True,
    responses=errors(404),
)
async def get_transcription(request: Request, transcriptionId: str) -> Any:  # noqa: N803
    services = _services(request)
    record = await _record(services, transcriptionId)
    view = Transcription(transcriptionId=record.id, status=record.status.value)
    if record.status == JobState.FAILED and record.error is not None:
        view.error = f"{record.error.code}: {record.error.message}"
    if record.status == JobState.COMPLETED:
        transcript = await _transcript(services, record)
        view.language = transcript.language
        view.duration = str(round(transcript.duration, 3))
        view.segmentCount = str(sum(1 for s in transcript.segments if s.text.strip()))
        view.text = to_txt(transcript).rstrip("\n")
    return view
