"""``/v1/transcripts`` and ``/v1/calls``: batch jobs, post-call jobs, results and questions.

Validation happens in two places, by design:

* synchronously (4xx): request shape, size of the upload (413, enforced while it streams),
  the URL's scheme and addresses (400 FORBIDDEN_URL), unknown ids (404);
* in the job (``failed`` with ``error.code``): everything that needs the audio itself:
  ``UNSUPPORTED_FORMAT`` (not audio), ``EMPTY_AUDIO``, ``INVALID_AUDIO`` (corrupt or
  truncated), ``DOWNLOAD_FAILED`` (URL answered 404, timed out...), ``TOO_LARGE`` (download
  over ``api.max_download_mb``), ``MODEL_NOT_FOUND``, ``DIARIZATION_UNAVAILABLE``.
"""

import asyncio
import json
from typing import Any, BinaryIO, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from api.bodies import JsonBody
from api.compat.tutorial_batch import Intelligence, TutorialSegment, intelligence, tutorial_segments
from api.errors import ApiError, errors
from api.services import Services
from api.uploads import read_upload
from engines.ask import AskError, ask
from engines.base import ModelNotFoundError
from engines.models import (
    UnsupportedLanguageError,
    check_caller_model,
    check_language,
    normalize_language,
)
from engines.redaction import ALL_KINDS
from pipeline.jobs import (
    JobKind,
    JobNotFoundError,
    JobOptions,
    JobRecord,
    JobSource,
    JobState,
)
from pipeline.postcall import submit_postcall
from pipeline.recorder import recorded_calls
from pipeline.url_fetch import DownloadError, check_url
from protocol.errors import ErrorCode
from protocol.openapi import inline_schema, json_body
from protocol.transcript import Answer, Transcript

router = APIRouter()

EXPORT_TYPES = {
    "json": "application/json",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "txt": "text/plain; charset=utf-8",
}


def _known_kinds(value: Any) -> Any:
    if isinstance(value, list):
        unknown = sorted(set(value) - set(ALL_KINDS))
        if unknown:
            raise ValueError(f"unknown PII kinds {unknown}; known: {list(ALL_KINDS)}")
    return value


class TranscriptOptions(JsonBody):
    model_config = ConfigDict(extra="forbid")

    language: str | None = Field(default=None, max_length=16)
    model: str | None = Field(
        default=None, max_length=256, description="default: postcall.batch_model"
    )
    diarize: bool = False
    speakers_expected: int | None = Field(default=None, ge=1, le=32)
    redact_pii: bool | list[str] = Field(
        default=False, description="true = every kind, or a list of kinds"
    )
    summarize: bool = False
    allow_truncated: bool = Field(
        default=False,
        description="transcribe what decodes of a truncated file (the transcript says partial)",
    )
    webhook_url: str | None = Field(default=None, max_length=2048)

    @field_validator("redact_pii")
    @classmethod
    def _check_kinds(cls, value: Any) -> Any:
        return _known_kinds(value)

    def job_options(self) -> JobOptions:
        return JobOptions(**self.model_dump(include=set(JobOptions.model_fields)))


class CreateFromUrl(TranscriptOptions):
    audio_url: str = Field(max_length=2048)


class CallTranscribeRequest(JsonBody):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    language: str | None = None
    redact_pii: bool | list[str] | None = None
    summarize: bool | None = None
    webhook_url: str | None = None

    @field_validator("redact_pii")
    @classmethod
    def _check_kinds(cls, value: Any) -> Any:
        return _known_kinds(value)


class RetranscribeRequest(JsonBody):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, description="default: postcall.model")
    beam_size: int | None = Field(default=None, ge=1, le=16)
    webhook_url: str | None = None


class AskRequest(JsonBody):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=2000)


class JobAccepted(BaseModel):
    id: str
    status: JobState
    transcript_id: str | None = None


class JobView(BaseModel):
    id: str
    kind: JobKind
    status: JobState
    progress: int
    message: str
    created_at: float
    updated_at: float
    source: JobSource
    options: JobOptions
    error: dict[str, str] | None
    results: list[str]
    transcript: Transcript | None = None
    segments: list[TutorialSegment] | None = Field(
        default=None, description="the tutorial API's flat segments, once completed"
    )
    intelligence: Intelligence | None = Field(
        default=None, description="the tutorial API's summary fields, when summarized"
    )


class JobPage(BaseModel):
    data: list[JobView]
    next_cursor: str | None


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _view(record: JobRecord, transcript: Transcript | None = None) -> JobView:
    data = record.model_dump(mode="json", exclude={"webhook_url", "attempts"})
    view = JobView.model_validate({**data, "transcript": transcript})
    if transcript is not None:
        view.segments = tutorial_segments(transcript)
        view.intelligence = intelligence(transcript)
    return view


async def _json_body(request: Request, model: type[BaseModel], optional: bool = False) -> Any:
    raw = await request.body()
    if not raw.strip():
        if optional:
            return model()
        raise ApiError(400, ErrorCode.INVALID_REQUEST, "request body is empty; JSON expected")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, ErrorCode.INVALID_REQUEST, f"malformed JSON: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, ErrorCode.INVALID_REQUEST, _describe(exc)) from exc


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
    )


async def _checked_url(url: str, services: Services, what: str) -> str:
    try:
        await check_url(url, services.settings.api.allow_private_urls)
    except DownloadError as exc:
        services.metrics.refused.labels("forbidden_url").inc()
        raise ApiError(400, exc.code, f"{what}: {exc.message}") from exc
    return url


async def _checked_model(name: str | None, services: Services) -> None:
    settings = services.settings
    if name is None or settings.api.allow_model_paths:
        return
    try:
        await asyncio.to_thread(check_caller_model, name, settings.data_dir)
    except ModelNotFoundError as exc:
        services.metrics.refused.labels("model").inc()
        raise ApiError(422, ErrorCode.MODEL_NOT_FOUND, str(exc)) from exc


async def _record(services: Services, job_id: str) -> JobRecord:
    try:
        return await services.store.get(job_id)
    except JobNotFoundError as exc:
        raise ApiError(404, ErrorCode.NOT_FOUND, f"no transcript {job_id!r}") from exc


async def _transcript(services: Services, record: JobRecord) -> Transcript:
    if record.status != JobState.COMPLETED:
        raise ApiError(
            409,
            ErrorCode.NOT_READY,
            f"transcript {record.id} is {record.status.value}, not completed",
        )
    try:
        return await services.store.get_transcript(record.id)
    except JobNotFoundError as exc:
        raise ApiError(404, ErrorCode.NOT_FOUND, f"the result of {record.id} is gone") from exc


_FORM_FLAGS = [
    name for name, info in TranscriptOptions.model_fields.items() if info.annotation is bool
]


def _form_options(fields: dict[str, str]) -> TranscriptOptions:
    data: dict[str, Any] = {key: value for key, value in fields.items() if value != ""}
    for flag in _FORM_FLAGS:
        if flag in fields and fields[flag] not in ("true", "false"):
            raise ApiError(422, ErrorCode.INVALID_REQUEST, f"{flag}: expected true or false")
    pii = data.get("redact_pii")
    if isinstance(pii, str) and pii not in ("true", "false"):
        # a form field: "email,phone" or '["email", "phone"]'
        data["redact_pii"] = [k.strip(' "[]') for k in pii.split(",") if k.strip(' "[]')]
    try:
        return TranscriptOptions.model_validate(data, strict=False)
    except ValidationError as exc:
        raise ApiError(422, ErrorCode.INVALID_REQUEST, _describe(exc)) from exc


_FORM_KINDS = r'^(\[?"?[a-z]+"?( *, *"?[a-z]+"?)*\]?)?$'

_CREATE_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": inline_schema(CreateFromUrl)},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    **TranscriptOptions.model_json_schema()["properties"],
                    "redact_pii": {
                        "anyOf": [
                            {"type": "boolean"},
                            {"type": "string", "pattern": _FORM_KINDS},
                        ],
                        "description": "true, false, or kinds: email,phone",
                    },
                },
            }
        },
    },
}


def _checked_language(model: str, language: str | None) -> str | None:
    """``language`` as the models know it (None for ``auto``), if ``model`` recognizes it.
    No language at all is the model's business (an English-only model hears English)."""
    if language is None:
        return None
    code = normalize_language(language)
    try:
        check_language(model, code)
    except UnsupportedLanguageError as exc:
        raise ApiError(422, ErrorCode.INVALID_REQUEST, str(exc)) from exc
    return code


async def _submit_batch(
    services: Services, options: TranscriptOptions, source: JobSource, audio: BinaryIO | None
) -> JobRecord:
    await _checked_model(options.model, services)
    if options.webhook_url:
        await _checked_url(options.webhook_url, services, "webhook_url")
    job = options.job_options()
    language = _checked_language(job.model or services.settings.postcall.batch_model, job.language)
    record = JobRecord.queued(
        JobKind.BATCH,
        source,
        job.model_copy(update={"language": language}),
        options.webhook_url or services.settings.postcall.webhook_url,
    )
    return await services.store.submit(record, audio)


@router.post(
    "/v1/transcripts",
    status_code=202,
    response_model=JobAccepted,
    openapi_extra={"requestBody": _CREATE_BODY},
    responses=errors(400, 415, 422),
)
async def create_transcript(request: Request) -> JSONResponse:
    """Queue a batch job: JSON with ``audio_url`` or a multipart upload with ``file``."""
    services = _services(request)
    settings = services.settings
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        body: CreateFromUrl = await _json_body(request, CreateFromUrl)
        url = await _checked_url(body.audio_url, services, "audio_url")
        record = await _submit_batch(services, body, JobSource(type="url", url=url), None)
    elif content_type == "multipart/form-data":
        upload = await read_upload(request, int(settings.api.max_upload_mb * 1024 * 1024))
        if upload.file is None:
            raise ApiError(400, ErrorCode.INVALID_REQUEST, "multipart upload needs a 'file' part")
        try:
            source = JobSource(type="upload", filename=upload.file.filename, size=upload.size)
            record = await _submit_batch(
                services, _form_options(upload.fields), source, upload.file.file
            )
        finally:
            await upload.file.close()
        services.metrics.upload_bytes.inc(upload.size)
    else:
        raise ApiError(
            415,
            ErrorCode.UNSUPPORTED_FORMAT,
            "send application/json with audio_url or multipart/form-data with file",
        )
    services.metrics.jobs_submitted.labels(JobKind.BATCH.value).inc()
    return JSONResponse(
        JobAccepted(id=record.id, status=record.status).model_dump(mode="json"),
        status_code=202,
        headers={"Location": f"/v1/transcripts/{record.id}"},
    )


@router.get("/v1/transcripts", response_model=JobPage, responses=errors(422))
async def list_transcripts(
    request: Request,
    limit: int = Query(default=20, ge=1),
    cursor: str | None = Query(default=None, max_length=64),
) -> JobPage:
    """Newest first; follow ``next_cursor`` for the next page."""
    services = _services(request)
    records, next_cursor = await services.store.page(
        min(limit, services.settings.api.max_page_size), cursor
    )
    return JobPage(data=[_view(record) for record in records], next_cursor=next_cursor)


@router.get(
    "/v1/transcripts/{job_id}.{fmt}",
    responses={200: {"content": {v: {} for v in EXPORT_TYPES.values()}}, **errors(404, 409)},
)
async def export_transcript(
    request: Request, job_id: str, fmt: Literal["json", "srt", "vtt", "txt"]
) -> Response:
    services = _services(request)
    record = await _record(services, job_id)
    await _transcript(services, record)
    try:
        data = await services.store.get_file(job_id, f"transcript.{fmt}")
    except JobNotFoundError as exc:
        raise ApiError(404, ErrorCode.NOT_FOUND, f"no {fmt} export of {job_id}") from exc
    return Response(data, media_type=EXPORT_TYPES[fmt])


@router.get("/v1/transcripts/{job_id}", response_model=JobView, responses=errors(404))
async def get_transcript(request: Request, job_id: str) -> JobView:
    services = _services(request)
    record = await _record(services, job_id)
    # a summary job (POST /api/summary/) has a summary, not a transcript
    finished = record.status == JobState.COMPLETED and record.kind != JobKind.SUMMARY
    transcript = await _transcript(services, record) if finished else None
    return _view(record, transcript)


@router.delete("/v1/transcripts/{job_id}", status_code=204, responses=errors(404))
async def delete_transcript(request: Request, job_id: str) -> Response:
    """Remove the job record, its audio, its results and its webhook log."""
    services = _services(request)
    try:
        await services.store.delete(job_id)
    except JobNotFoundError as exc:
        raise ApiError(404, ErrorCode.NOT_FOUND, f"no transcript {job_id!r}") from exc
    await services.notifier.forget(job_id)
    return Response(status_code=204)


@router.get("/v1/transcripts/{job_id}/webhooks", responses=errors(404))
async def webhook_log(request: Request, job_id: str) -> dict[str, Any]:
    """Every event of the job with its delivery attempts."""
    services = _services(request)
    await _record(services, job_id)
    deliveries = await services.notifier.deliveries(job_id)
    return {"data": [delivery.model_dump(mode="json") for delivery in deliveries]}


@router.post(
    "/v1/transcripts/{job_id}/segments/{segment_id}/retranscribe",
    status_code=202,
    response_model=JobAccepted,
    responses=errors(400, 404, 409, 422),
    openapi_extra={"requestBody": json_body(RetranscribeRequest, required=False)},
)
async def retranscribe_segment(request: Request, job_id: str, segment_id: str) -> JSONResponse:
    """Queue a re-pass of one segment; the parent transcript is rewritten in place when done."""
    services = _services(request)
    body: RetranscribeRequest = await _json_body(request, RetranscribeRequest, optional=True)
    parent = await _record(services, job_id)
    transcript = await _transcript(services, parent)
    if not any(segment.id == segment_id for segment in transcript.segments):
        raise ApiError(
            404, ErrorCode.NOT_FOUND, f"transcript {job_id} has no segment {segment_id!r}"
        )
    await _checked_model(body.model, services)
    if body.webhook_url:
        await _checked_url(body.webhook_url, services, "webhook_url")
    record = JobRecord.queued(
        JobKind.RETRANSCRIBE,
        JobSource(
            type="segment", parent_id=job_id, segment_id=segment_id, call_id=parent.source.call_id
        ),
        JobOptions(
            model=body.model,
            beam_size=body.beam_size,
            language=transcript.language,
            redact_pii=list(transcript.redacted) if transcript.redacted else False,
        ),
        body.webhook_url or parent.webhook_url,
    )
    await services.store.submit(record)
    services.metrics.jobs_submitted.labels(JobKind.RETRANSCRIBE.value).inc()
    accepted = JobAccepted(id=record.id, status=record.status, transcript_id=job_id)
    return JSONResponse(accepted.model_dump(mode="json"), status_code=202)


@router.post(
    "/v1/transcripts/{job_id}/ask",
    response_model=Answer,
    responses=errors(400, 404, 409, 422),
    openapi_extra={"requestBody": json_body(AskRequest)},
)
async def ask_transcript(request: Request, job_id: str) -> Answer:
    """Answer a question from the transcript, citing segments and timecodes."""
    services = _services(request)
    body: AskRequest = await _json_body(request, AskRequest)
    transcript = await _transcript(services, await _record(services, job_id))
    try:
        answer = await asyncio.to_thread(ask, transcript, body.question, services.settings)
    except AskError as exc:
        raise ApiError(422, exc.code, str(exc)) from exc
    return answer


@router.post(
    "/v1/calls/{call_id}/transcribe",
    status_code=202,
    response_model=JobAccepted,
    responses=errors(400, 404, 422),
    openapi_extra={"requestBody": json_body(CallTranscribeRequest, required=False)},
)
async def transcribe_call(request: Request, call_id: str) -> JSONResponse:
    """Queue the post-call re-pass of a recorded call (again, e.g. with another model)."""
    services = _services(request)
    settings = services.settings
    body: CallTranscribeRequest = await _json_body(request, CallTranscribeRequest, optional=True)
    if "/" in call_id or call_id in (".", "..") or not await services.store.has_call(call_id):
        raise ApiError(404, ErrorCode.NOT_FOUND, f"no handed-over call {call_id!r}")
    await _checked_model(body.model, services)
    if body.webhook_url:
        await _checked_url(body.webhook_url, services, "webhook_url")
    options = JobOptions(
        model=body.model,
        language=_checked_language(body.model or settings.postcall.model, body.language),
        summarize=settings.postcall.summarize if body.summarize is None else body.summarize,
        redact_pii=settings.postcall.redact_pii if body.redact_pii is None else body.redact_pii,
    )
    record = await submit_postcall(services.store, settings, call_id, options, body.webhook_url)
    services.metrics.jobs_submitted.labels(JobKind.POSTCALL.value).inc()
    return JSONResponse(
        JobAccepted(id=record.id, status=record.status).model_dump(mode="json"), status_code=202
    )


class CallParticipantView(BaseModel):
    participant: str
    name: str | None
    offset: float


class CallView(BaseModel):
    call_id: str
    room: str
    state: Literal["live", "ended", "handed_over"]
    started_at: float
    ended_at: float | None
    end_reason: str | None
    job_id: str | None = Field(description="its post-call job (GET /v1/transcripts/{job_id})")
    participants: list[CallParticipantView]


class CallList(BaseModel):
    data: list[CallView]


@router.get("/v1/calls", response_model=CallList)
async def list_calls(request: Request) -> CallList:
    """Calls recorded by this service, newest first, with their state."""
    calls = await asyncio.to_thread(recorded_calls, _services(request).settings.calls_dir)
    return CallList(
        data=[
            CallView(
                call_id=call.call_id,
                room=call.room,
                state=call.state,
                started_at=call.started_at,
                ended_at=call.ended_at,
                end_reason=call.end_reason,
                job_id=call.job_id,
                participants=[
                    CallParticipantView(participant=p.participant, name=p.name, offset=p.offset)
                    for p in call.participants
                ],
            )
            for call in reversed(calls)
        ]
    )
