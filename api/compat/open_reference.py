"""The open transcription API reference: ``/api/transcribe``, ``/api/summary``, ``/api/chat``,
``/api/retranslate``, over roomscribe's job store, worker, summarizer and question engine.

* transcription jobs are ordinary batch jobs (``GET /v1/transcripts/{id}`` shows them too);
  ``queued`` reads ``processing`` here, the reference's word for a job not yet finished;
  the recognizer runs over the whole file at once, so ``chunk_info`` says chunk 1 of 1;
* summaries are jobs of kind ``summary`` in the same store, computed in this process by the
  embedded summarizer or the configured LLM (``model_used`` says which); ``max_length`` and
  ``length`` count words;
* chat answers the last user message from the transcript (engines/ask.py); ``usage`` counts
  whitespace-separated words of the prompt (passages and messages) and of the answer;
* retranslation runs the segment's audio as a batch job and answers its text; the job is
  deleted once answered;
* errors carry the reference's ``detail`` besides roomscribe's ``error``;
  ``WS /api/transcribe/live/{job_id}`` takes ``?api_key=`` or a bearer header.
"""

import asyncio
import contextlib
import io
import json
import logging
import re
import time
import wave
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import (
    APIRouter,
    Query,
    Request,
    Response,
    WebSocket,
    WebSocketDisconnect,
)
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.auth import AccessPolicy, authorization_token
from api.bodies import JsonBody
from api.errors import ApiError, errors
from api.services import Services
from api.uploads import read_upload
from config.settings import Settings
from engines.ask import AskError, ask
from engines.base import SAMPLE_RATE, ModelNotFoundError
from engines.llm import llm_configured, summarize_with
from engines.models import (
    CATALOG,
    UnsupportedLanguageError,
    check_caller_model,
    check_language,
    list_models,
    normalize_language,
)
from pipeline.batch import decode
from pipeline.jobs import (
    JobFailure,
    JobKind,
    JobNotFoundError,
    JobOptions,
    JobRecord,
    JobSource,
    JobState,
    new_job_id,
    wait_for,
)
from protocol.errors import ErrorCode, ServiceError, error_body
from protocol.openapi import inline_schema
from protocol.transcript import Segment, Speaker, Summary, Transcript

log = logging.getLogger("roomscribe.compat.open_reference")

NOT_FOUND_MESSAGE = "Transcription job not found or expired"
# bounds a caller's transcript so that one just past them still fits api.max_json_kb (256 KiB)
MAX_SEGMENTS = 5000
MAX_TEXT_CHARS = 200_000
RETRANSLATE_WAIT_S = 300.0
POLL_S = 0.25
TRANSCRIPTION_KINDS = (JobKind.BATCH, JobKind.POSTCALL, JobKind.RETRANSCRIBE)


def detail_response(status: int, code: str, message: str, detail: Any = None) -> JSONResponse:
    body = {**error_body(code, message), "detail": message if detail is None else detail}
    return JSONResponse(body, status_code=status)


class DetailRoute(APIRoute):
    """Answers this API's errors as ``{"detail": ..., "error": {code, message}}``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except ServiceError as exc:
                return detail_response(exc.status, exc.code, exc.message)
            except RequestValidationError as exc:
                problems = exc.errors()
                message = "; ".join(
                    f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}"
                    for e in problems
                )
                return detail_response(
                    422, ErrorCode.INVALID_REQUEST, message, jsonable_encoder(problems)
                )
            except StarletteHTTPException as exc:
                code = ErrorCode.NOT_FOUND if exc.status_code == 404 else ErrorCode.INVALID_REQUEST
                return detail_response(exc.status_code, code, str(exc.detail))
            except Exception:
                log.exception("%s %s failed", request.method, request.url.path)
                request_id = request.scope.get("state", {}).get("request_id", "")
                return detail_response(
                    500, ErrorCode.INTERNAL, f"internal error (request id {request_id})"
                )

        return answer


_CODES = {code.value for code in ErrorCode}


def _fail(status: int, message: str, code: str = ErrorCode.INVALID_REQUEST) -> ApiError:
    return ApiError(status, ErrorCode(code) if code in _CODES else ErrorCode.INTERNAL, message)


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


# --- shapes -------------------------------------------------------------------------------


class ModelInfo(BaseModel):
    name: str
    full_name: str
    is_downloaded: bool
    size_mb: float
    description: str


class ModelList(BaseModel):
    models: list[ModelInfo]


class Started(BaseModel):
    job_id: str
    status: Literal["processing", "completed", "failed"]
    message: str


class JobStatus(BaseModel):
    job_id: str
    status: Literal["processing", "completed", "failed", "not_found"]
    message: str
    progress: int
    updated_at: float


class JobList(BaseModel):
    jobs: list[JobStatus]
    count: int


class ResultSegment(BaseModel):
    start: float
    end: float
    text: str
    speaker: str
    speaker_confidence: float | None = Field(
        description="share of the segment inside its speaker's turns; 1.0 for a speaker's own "
        "track; null when the audio was not diarized"
    )
    start_display: str
    end_display: str


class TranscriptionResult(BaseModel):
    segments: list[ResultSegment]
    text: str
    language: str | None
    audio_duration: float


class InputSegment(JsonBody):
    start: float = Field(ge=0.0)
    end: float = Field(ge=0.0)
    text: str = Field(max_length=20_000)
    speaker: str | None = Field(default=None, max_length=128)


class SummaryRequest(JsonBody):
    transcript: list[InputSegment] = Field(default_factory=list, max_length=MAX_SEGMENTS)
    full_text: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    model_name: str | None = Field(default=None, max_length=256)
    max_length: int = Field(default=500, ge=1, le=100_000)
    format: Literal["paragraph", "bullet_points", "key_points"] = "paragraph"


class SummaryResult(BaseModel):
    summary: str
    topics: list[str]
    length: int = Field(description="words in summary")
    model_used: str


class SummaryStatus(BaseModel):
    status: Literal["processing", "completed", "failed"]
    message: str
    progress: int


class ChatMessage(JsonBody):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=20_000)


class ChatRequest(JsonBody):
    transcript: list[InputSegment] = Field(default_factory=list, max_length=MAX_SEGMENTS)
    full_text: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    messages: list[ChatMessage] = Field(min_length=1, max_length=200)
    model_name: str | None = Field(default=None, max_length=256)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(default=500, ge=1, le=100_000)


class Usage(BaseModel):
    prompt: int
    completion: int
    total: int


class ChatReply(BaseModel):
    message: ChatMessage
    model_used: str
    usage: Usage


class ChatModel(BaseModel):
    id: str
    name: str
    description: str


class ChatModelList(BaseModel):
    models: list[ChatModel]


class SegmentFromFull(JsonBody):
    model_config = ConfigDict(extra="ignore")

    segment_id: str = Field(min_length=1, max_length=256)
    start_time: float = Field(ge=0.0)
    end_time: float = Field(ge=0.0)
    model_name: str | None = Field(default=None, max_length=256)
    language: str | None = Field(default=None, max_length=16)


class Retranslated(BaseModel):
    segment_id: str
    text: str
    confidence: float | None
    speaker: str | None
    model_used: str


# --- helpers ------------------------------------------------------------------------------


def display_time(seconds: float) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}"


def _short_name(name: str) -> str:
    return name.removeprefix("whisper-")


def _model(name: str | None, services: Services, default: str) -> str:
    """The roomscribe model a reference name means (``tiny.en`` = ``whisper-tiny.en``)."""
    if not name:
        return default
    if name not in CATALOG and f"whisper-{name}" in CATALOG:
        name = f"whisper-{name}"
    if not services.settings.api.allow_model_paths:
        try:
            check_caller_model(name, services.settings.data_dir)
        except ModelNotFoundError as exc:
            raise _fail(400, str(exc), ErrorCode.MODEL_NOT_FOUND) from exc
    return name


def _language(model: str, language: str | None) -> str | None:
    if not language:
        return None
    code = normalize_language(language)
    try:
        check_language(model, code)
    except UnsupportedLanguageError as exc:
        raise _fail(400, str(exc)) from exc
    return code


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _flag(fields: dict[str, str], name: str, default: bool) -> bool:
    if name not in fields:
        return default
    value = fields[name].strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise _fail(400, f"{name}: expected true or false, got {value!r}")


def _seconds(fields: dict[str, str], name: str) -> float | None:
    if name not in fields:
        return None
    value = fields[name].strip()
    try:
        number = float(value)
    except ValueError as exc:
        raise _fail(400, f"{name}: expected seconds, got {value!r}") from exc
    if not number >= 0 or number == float("inf"):
        raise _fail(400, f"{name}: expected seconds >= 0, got {value!r}")
    return number


@dataclass
class AudioUpload:
    file: UploadFile
    fields: dict[str, str]
    size: int


async def _audio_upload(request: Request, settings: Settings, fields: str) -> AudioUpload:
    """A multipart upload whose ``file`` is audio (or unlabelled); the caller closes it."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise _fail(400, f"send multipart/form-data with {fields}")
    upload = await read_upload(request, int(settings.api.max_upload_mb * 1024 * 1024))
    if upload.file is None:
        raise _fail(400, "file is required")
    try:
        _audio_type(upload.file.content_type)
    except ApiError:
        await upload.file.close()
        raise
    return AudioUpload(upload.file, upload.fields, upload.size)


def _audio_type(content_type: str | None) -> None:
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind and kind != "application/octet-stream" and not kind.startswith(("audio/", "video/")):
        raise _fail(400, f"file content-type {kind!r} is not audio", ErrorCode.UNSUPPORTED_FORMAT)


def _status_word(record: JobRecord) -> Literal["processing", "completed", "failed"]:
    if record.status == JobState.COMPLETED:
        return "completed"
    if record.status == JobState.FAILED:
        return "failed"
    return "processing"


def _message(record: JobRecord) -> str:
    if record.error is not None:
        return f"{record.error.code}: {record.error.message}"
    return record.message


def _status(record: JobRecord) -> JobStatus:
    return JobStatus(
        job_id=record.id,
        status=_status_word(record),
        message=_message(record),
        progress=100 if record.status == JobState.COMPLETED else record.progress,
        updated_at=record.updated_at,
    )


async def _transcription(services: Services, job_id: str) -> JobRecord:
    try:
        record = await services.store.get(job_id)
    except JobNotFoundError as exc:
        raise _fail(404, NOT_FOUND_MESSAGE, ErrorCode.NOT_FOUND) from exc
    if record.kind not in TRANSCRIPTION_KINDS:
        raise _fail(404, NOT_FOUND_MESSAGE, ErrorCode.NOT_FOUND)
    return record


async def _turns(services: Services, job_id: str) -> list[tuple[float, float, str]] | None:
    try:
        data = await services.store.get_file(job_id, "turns.json")
    except JobNotFoundError:
        return None
    return [(t["start"], t["end"], t["speaker"]) for t in json.loads(data)]


def _speaker_confidence(
    segment: Segment, turns: list[tuple[float, float, str]] | None, own_tracks: bool
) -> float | None:
    if own_tracks:
        return 1.0
    if turns is None:
        return None
    span = segment.end - segment.start
    mine = [(start, end) for start, end, speaker in turns if speaker == segment.speaker]
    if span <= 0:  # one instant: whether a turn of its speaker holds it
        return float(any(start <= segment.start <= end for start, end in mine))
    inside = sum(max(0.0, min(end, segment.end) - max(start, segment.start)) for start, end in mine)
    return round(min(inside / span, 1.0), 3)


def _speaker_label(transcript: Transcript, speaker: str) -> str:
    match = re.fullmatch(r"S(\d+)", speaker)
    if match and transcript.speaker_name(speaker) == speaker:
        return f"SPEAKER_{match.group(1)}"
    return transcript.speaker_name(speaker)


async def _result(services: Services, record: JobRecord) -> TranscriptionResult:
    if record.status != JobState.COMPLETED:
        raise _fail(400, f"job {record.id} is {_status_word(record)}, no result yet")
    try:
        transcript = await services.store.get_transcript(record.id)
    except JobNotFoundError as exc:
        raise _fail(404, NOT_FOUND_MESSAGE, ErrorCode.NOT_FOUND) from exc
    turns = await _turns(services, record.id)
    own_tracks = record.kind == JobKind.POSTCALL
    segments = [
        ResultSegment(
            start=s.start,
            end=s.end,
            text=s.text,
            speaker=_speaker_label(transcript, s.speaker),
            speaker_confidence=_speaker_confidence(s, turns, own_tracks),
            start_display=display_time(s.start),
            end_display=display_time(s.end),
        )
        for s in transcript.segments
        if s.text.strip()
    ]
    return TranscriptionResult(
        segments=segments,
        text=" ".join(s.text.strip() for s in segments),
        language=transcript.language,
        audio_duration=transcript.duration,
    )


def _as_transcript(job_id: str, segments: list[InputSegment], full_text: str | None) -> Transcript:
    """A caller's transcript (segments, or ``full_text`` as one segment) for the engines."""
    parts = [s for s in segments if s.text.strip()]
    if not parts and full_text and full_text.strip():
        words = len(full_text.split())
        parts = [InputSegment(start=0.0, end=float(words) * 0.4, text=full_text)]
    if not parts:
        raise _fail(400, "give transcript segments or full_text")
    speakers = sorted({p.speaker or "S1" for p in parts})
    built = [
        Segment(
            id=f"s{i:04d}",
            speaker=p.speaker or "S1",
            start=p.start,
            end=max(p.end, p.start),
            text=" ".join(p.text.split()),
        )
        for i, p in enumerate(parts)
    ]
    return Transcript(
        id=job_id,
        model="caller",
        duration=max(s.end for s in built),
        speakers=[Speaker(id=s) for s in speakers],
        segments=built,
    )


def _words(text: str) -> int:
    return len(text.split())


def _clip_words(items: list[str], limit: int) -> list[str]:
    kept: list[str] = []
    used = 0
    for item in items:
        count = _words(item)
        if used + count > limit:
            if not kept:
                kept.append(" ".join(item.split()[:limit]))
            break
        kept.append(item)
        used += count
    return kept


def render_summary(summary: Summary, style: str, max_length: int) -> str:
    if style == "key_points":
        points = [t.text for t in summary.topics] + [d.text for d in summary.decisions]
        points += [a.text for a in summary.action_items]
        items = _clip_words(points or [s.text for s in summary.summary], max_length)
        return "\n".join(f"{n}. {item}" for n, item in enumerate(items, 1))
    items = _clip_words([s.text for s in summary.summary], max_length)
    if style == "bullet_points":
        return "\n".join(f"- {item}" for item in items)
    return " ".join(items)


def _wav(samples: Any) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(SAMPLE_RATE)
        file.writeframes(samples.astype("<i2").tobytes())
    return out.getvalue()


async def _decoded(data: bytes, name: str) -> Any:
    try:
        return await decode(data, name)
    except JobFailure as exc:
        raise _fail(400, exc.message, exc.code) from exc


async def _recognize_clip(
    services: Services,
    samples: Any,
    name: str,
    model: str,
    language: str | None,
    segment_id: str,
    speaker: str | None,
) -> Retranslated:
    """The clip's text from a batch job (through the worker), the job removed afterwards."""
    if samples.size == 0:
        raise _fail(400, "the segment has no audio", ErrorCode.EMPTY_AUDIO)
    data = _wav(samples)
    record = JobRecord.queued(
        JobKind.BATCH,
        JobSource(type="upload", filename=name, size=len(data)),
        JobOptions(model=model, language=language),
    )
    store = services.store
    await store.submit(record, data)
    try:
        record = await wait_for(store, record.id, RETRANSLATE_WAIT_S, POLL_S)
        if record.status == JobState.FAILED:
            error = record.error
            code = error.code if error else ErrorCode.INTERNAL
            raise _fail(400, _message(record), code)
        transcript = await store.get_transcript(record.id)
    except TimeoutError as exc:
        raise _fail(
            500, f"recognition did not finish in {RETRANSLATE_WAIT_S:g} s", ErrorCode.INTERNAL
        ) from exc
    finally:
        with contextlib.suppress(JobNotFoundError):
            await store.delete(record.id)
            await services.notifier.forget(record.id)
    words = [w for s in transcript.segments for w in s.words]
    return Retranslated(
        segment_id=segment_id,
        text=" ".join(s.text.strip() for s in transcript.segments if s.text.strip()),
        confidence=round(sum(w.confidence for w in words) / len(words), 3) if words else None,
        speaker=speaker,
        model_used=_short_name(transcript.model),
    )


def _form_body(fields: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": required, "properties": fields}
            }
        },
    }


_TRANSCRIBE_FORM = _form_body(
    {
        "file": {"type": "string", "format": "binary"},
        "model_name": {"type": "string", "default": "tiny.en"},
        "language": {"type": "string", "maxLength": 16},
        "diarize": {
            "anyOf": [
                {"type": "boolean"},
                {"type": "string", "enum": [*_TRUE, *_FALSE, "True", "False"]},
            ],
            "default": True,
        },
    },
    ["file"],
)
_SEGMENT_FORM = _form_body(
    {
        "file": {"type": "string", "format": "binary"},
        "segment_id": {"type": "string", "minLength": 1, "maxLength": 256},
        "start_time": {"type": "number", "minimum": 0},
        "end_time": {"type": "number", "minimum": 0},
        "model_name": {"type": "string"},
        "language": {"type": "string", "maxLength": 16},
    },
    ["file", "segment_id"],
)


# --- routes -------------------------------------------------------------------------------


def open_reference_router() -> APIRouter:
    """Every route of the open API reference."""
    router = APIRouter(route_class=DetailRoute, tags=["open API reference"])
    running: set[asyncio.Task[None]] = set()

    @router.get("/api/transcribe/models", response_model=ModelList)
    async def transcribe_models(request: Request) -> ModelList:
        found = await asyncio.to_thread(list_models, _services(request).settings.data_dir)
        return ModelList(
            models=[
                ModelInfo(
                    name=_short_name(m.name),
                    full_name=f"openai/{m.name}" if m.kind == "whisper" else m.name,
                    is_downloaded=m.present,
                    size_mb=round(m.size_bytes / 1_000_000, 1),
                    description=CATALOG[m.name].description if m.name in CATALOG else m.source,
                )
                for m in found
                if m.kind != "diarization"
            ]
        )

    @router.post(
        "/api/transcribe/",
        response_model=Started,
        responses=errors(400, 413),
        openapi_extra={"requestBody": _TRANSCRIBE_FORM},
    )
    async def transcribe(request: Request) -> Started:
        """Queue a batch job for the uploaded file (``diarize`` defaults to true, as documented)."""
        services = _services(request)
        settings = services.settings
        upload = await _audio_upload(request, settings, "a file field")
        try:
            model = _model(upload.fields.get("model_name"), services, settings.postcall.batch_model)
            options = JobOptions(
                model=model,
                language=_language(model, upload.fields.get("language")),
                diarize=_flag(upload.fields, "diarize", True),
            )
            record = JobRecord.queued(
                JobKind.BATCH,
                JobSource(type="upload", filename=upload.file.filename, size=upload.size),
                options,
                settings.postcall.webhook_url,
            )
            await services.store.submit(record, upload.file.file)
        finally:
            await upload.file.close()
        services.metrics.jobs_submitted.labels(JobKind.BATCH.value).inc()
        services.metrics.upload_bytes.inc(upload.size)
        return Started(job_id=record.id, status="processing", message="Transcription started")

    @router.get("/api/transcribe/jobs", response_model=JobList)
    async def transcribe_jobs(request: Request) -> JobList:
        services = _services(request)
        records, _ = await services.store.page(services.settings.api.max_page_size)
        jobs = [_status(r) for r in records if r.kind in TRANSCRIPTION_KINDS]
        return JobList(jobs=jobs, count=len(jobs))

    @router.get("/api/transcribe/status/{job_id}", response_model=JobStatus)
    async def transcribe_status(request: Request, job_id: str) -> JobStatus:
        """An unknown job answers 200 with status ``not_found``, as documented."""
        try:
            return _status(await _transcription(_services(request), job_id))
        except ApiError:
            return JobStatus(
                job_id=job_id,
                status="not_found",
                message=NOT_FOUND_MESSAGE,
                progress=0,
                updated_at=time.time(),
            )

    @router.get(
        "/api/transcribe/result/{job_id}",
        response_model=TranscriptionResult,
        responses=errors(400, 404),
    )
    async def transcribe_result(request: Request, job_id: str) -> TranscriptionResult:
        services = _services(request)
        return await _result(services, await _transcription(services, job_id))

    @router.get("/api/transcribe/debug/{job_id}", responses=errors(404))
    async def transcribe_debug(request: Request, job_id: str) -> dict[str, Any]:
        """The job record and what its stored result holds."""
        services = _services(request)
        record = await _transcription(services, job_id)
        found: dict[str, Any] = {
            "job_id": record.id,
            "status": _status_word(record),
            "state": record.status.value,
            "kind": record.kind.value,
            "progress": record.progress,
            "message": _message(record),
            "attempts": record.attempts,
            "created_at": record.created_at,
            "updated_at": record.updated_at,
            "source": record.source.model_dump(mode="json"),
            "options": record.options.model_dump(mode="json"),
            "error": record.error.model_dump(mode="json") if record.error else None,
            "stored_files": await services.store.file_names(record.id),
            "cached_segments": 0,
            "latest_time": None,
            "audio_duration": None,
        }
        if record.status == JobState.COMPLETED:
            try:
                transcript = await services.store.get_transcript(record.id)
            except JobNotFoundError:
                return found
            found["cached_segments"] = len(transcript.segments)
            found["latest_time"] = max((s.end for s in transcript.segments), default=0.0)
            found["audio_duration"] = transcript.duration
        return found

    @router.websocket("/api/transcribe/live/{job_id}")
    async def transcribe_live(websocket: WebSocket, job_id: str) -> None:
        """Status on every change (with ``chunk_info``), then the segments, then the end."""
        services: Services = websocket.app.state.services
        await websocket.accept()
        api = services.settings.api
        given = websocket.query_params.get("api_key") or authorization_token(
            websocket.headers.get("authorization", "")
        )
        if not AccessPolicy(api.api_keys, api.public_paths).allows(websocket.url.path, given):
            services.metrics.auth_failures.labels("websocket").inc()
            await websocket.send_json({"type": "error", "detail": "missing or unknown API key"})
            await websocket.close(4001)
            return
        with contextlib.suppress(WebSocketDisconnect):
            await _follow(websocket, services, job_id)

    @router.post("/api/summary/", response_model=Started, responses=errors(400, 422))
    async def summary_start(request: Request, body: SummaryRequest) -> Started:
        services = _services(request)
        now = time.time()
        job_id = new_job_id(now)
        transcript = _as_transcript(job_id, body.transcript, body.full_text)
        record = JobRecord(
            id=job_id,
            kind=JobKind.SUMMARY,
            status=JobState.PROCESSING,
            message="summarizing",
            created_at=now,
            updated_at=now,
            source=JobSource(type="upload", filename="transcript.json"),
        )
        await services.store.create(record)
        task = asyncio.create_task(
            _summarize(services, job_id, transcript, body.format, body.max_length)
        )
        running.add(task)
        task.add_done_callback(running.discard)
        return Started(job_id=job_id, status="processing", message="Summary started")

    @router.get("/api/summary/status/{job_id}", response_model=SummaryStatus, responses=errors(404))
    async def summary_status(request: Request, job_id: str) -> SummaryStatus:
        record = await _summary_record(_services(request), job_id)
        return SummaryStatus(
            status=_status_word(record),
            message=_message(record),
            progress=100 if record.status == JobState.COMPLETED else record.progress,
        )

    @router.get("/api/summary/{job_id}", response_model=SummaryResult, responses=errors(400, 404))
    async def summary_result(request: Request, job_id: str) -> SummaryResult:
        services = _services(request)
        record = await _summary_record(services, job_id)
        if record.status != JobState.COMPLETED:
            raise _fail(400, f"summary {job_id} is {_status_word(record)}: {_message(record)}")
        try:
            data = await services.store.get_file(job_id, "summary.json")
        except JobNotFoundError as exc:
            raise _fail(404, f"the summary {job_id} is gone", ErrorCode.NOT_FOUND) from exc
        return SummaryResult.model_validate_json(data)

    @router.get("/api/chat/models", response_model=ChatModelList)
    async def chat_models(request: Request) -> ChatModelList:
        settings = _services(request).settings
        models = [
            ChatModel(
                id="embedded",
                name="Embedded retrieval",
                description="quotes the transcript passages closest to the question",
            )
        ]
        if llm_configured(settings):
            name = settings.postcall.llm_model or ""
            models.insert(
                0, ChatModel(id=name, name=name, description="the configured LLM endpoint")
            )
        return ChatModelList(models=models)

    @router.post("/api/chat/", response_model=ChatReply, responses=errors(400, 422))
    async def chat(request: Request, body: ChatRequest) -> ChatReply:
        """Answer the last user message from the transcript."""
        settings = _services(request).settings
        transcript = _as_transcript("chat", body.transcript, body.full_text)
        question = next((m.content for m in reversed(body.messages) if m.role == "user"), "")
        if not question.strip():
            raise _fail(400, "messages need a user message with content")
        try:
            answer = await asyncio.to_thread(ask, transcript, question, settings)
        except AskError as exc:
            raise _fail(400, str(exc)) from exc
        content = " ".join(answer.answer.split()[: body.max_tokens])
        prompt = sum(_words(m.content) for m in body.messages) + sum(
            _words(p.text) for p in answer.passages
        )
        completion = _words(content)
        used = (settings.postcall.llm_model or "llm") if answer.generator == "llm" else "embedded"
        return ChatReply(
            message=ChatMessage(role="assistant", content=content),
            model_used=used,
            usage=Usage(prompt=prompt, completion=completion, total=prompt + completion),
        )

    @router.post(
        "/api/retranslate/segment",
        response_model=Retranslated,
        responses=errors(400, 413),
        openapi_extra={"requestBody": _SEGMENT_FORM},
    )
    async def retranslate_segment(request: Request) -> Retranslated:
        """Recognize the clipped audio of one segment again (with ``model_name``)."""
        services = _services(request)
        settings = services.settings
        upload = await _audio_upload(request, settings, "file and segment_id")
        try:
            segment_id = upload.fields.get("segment_id", "").strip()
            if not segment_id:
                raise _fail(400, "segment_id is required")
            start, end = _seconds(upload.fields, "start_time"), _seconds(upload.fields, "end_time")
            if start is not None and end is not None and end <= start:
                raise _fail(400, f"end_time {end:g} is not after start_time {start:g}")
            model = _model(upload.fields.get("model_name"), services, settings.postcall.model)
            language = _language(model, upload.fields.get("language"))
            data = await asyncio.to_thread(upload.file.file.read)
        finally:
            await upload.file.close()
        samples = await _decoded(data, upload.file.filename or "segment")
        return await _recognize_clip(
            services, samples, f"{segment_id}.wav", model, language, segment_id, None
        )

    @router.post(
        "/api/retranslate/segment-from-full",
        response_model=Retranslated,
        responses=errors(400, 404, 422),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": inline_schema(SegmentFromFull)}},
            }
        },
    )
    async def retranslate_from_full(
        request: Request, job_id: str = Query(max_length=64)
    ) -> Retranslated:
        """Recognize ``start_time``..``end_time`` of a transcription job's uploaded audio again."""
        services = _services(request)
        try:
            body = SegmentFromFull.model_validate_json(await request.body())
        except ValueError as exc:
            raise _fail(422, f"body: {exc}") from exc
        if body.end_time <= body.start_time:
            raise _fail(
                400, f"end_time {body.end_time:g} is not after start_time {body.start_time:g}"
            )
        record = await _transcription(services, job_id)
        model = _model(body.model_name, services, services.settings.postcall.model)
        language = _language(model, body.language) or record.options.language
        try:
            data = await services.store.get_file(record.id, "audio")
        except JobNotFoundError as exc:
            raise _fail(
                404, f"job {job_id} has no uploaded audio to cut from", ErrorCode.NOT_FOUND
            ) from exc
        samples = await _decoded(data, record.source.filename or "audio")
        duration = samples.size / SAMPLE_RATE
        if body.start_time >= duration:
            raise _fail(
                400, f"start_time {body.start_time:g} is past the audio's end ({duration:.2f} s)"
            )
        clip = samples[int(body.start_time * SAMPLE_RATE) : int(body.end_time * SAMPLE_RATE)]
        speaker = await _speaker_at(services, record, body.start_time, body.end_time)
        return await _recognize_clip(
            services, clip, f"{body.segment_id}.wav", model, language, body.segment_id, speaker
        )

    return router


async def _speaker_at(
    services: Services, record: JobRecord, start: float, end: float
) -> str | None:
    """The speaker of the parent transcript's segment that overlaps the range most."""
    if record.status != JobState.COMPLETED:
        return None
    try:
        transcript = await services.store.get_transcript(record.id)
    except JobNotFoundError:
        return None
    best, overlap = None, 0.0
    for segment in transcript.segments:
        shared = min(end, segment.end) - max(start, segment.start)
        if shared > overlap:
            best, overlap = segment.speaker, shared
    return _speaker_label(transcript, best) if best else None


async def _summary_record(services: Services, job_id: str) -> JobRecord:
    try:
        record = await services.store.get(job_id)
    except JobNotFoundError as exc:
        raise _fail(404, f"no summary {job_id!r}", ErrorCode.NOT_FOUND) from exc
    if record.kind != JobKind.SUMMARY:
        raise _fail(404, f"no summary {job_id!r}", ErrorCode.NOT_FOUND)
    return record


async def _finish(services: Services, job_id: str, target: JobState, **changes: Any) -> None:
    # the worker's stale-job sweep may have marked a slow summary "retrying" (queued)
    def finished(record: JobRecord) -> JobRecord:
        if record.status == JobState.QUEUED:
            record = record.transition(JobState.PROCESSING)
        return record.transition(target, **changes)

    await services.store.modify(job_id, finished)


async def _summarize(
    services: Services, job_id: str, transcript: Transcript, style: str, max_length: int
) -> None:
    settings = services.settings
    try:
        summary = await asyncio.to_thread(summarize_with, transcript, settings)
        text = render_summary(summary, style, max_length)
        used = (settings.postcall.llm_model or "llm") if summary.generator == "llm" else "embedded"
        result = SummaryResult(
            summary=text,
            topics=[t.text for t in summary.topics],
            length=_words(text),
            model_used=used,
        )
        await services.store.put_file(job_id, "summary.json", result.model_dump_json().encode())
        await _finish(
            services,
            job_id,
            JobState.COMPLETED,
            progress=100,
            message="completed",
            results=["summary.json"],
        )
    except Exception as exc:
        log.exception("summary %s failed", job_id)
        with contextlib.suppress(JobNotFoundError):
            await _finish(
                services,
                job_id,
                JobState.FAILED,
                message="failed",
                error={"code": ErrorCode.INTERNAL, "message": str(exc) or type(exc).__name__},
            )


def _live_status(record: JobRecord) -> dict[str, Any]:
    status = _status(record)
    return {
        "type": "status",
        "job_id": record.id,
        "status": status.status,
        "message": status.message,
        "progress": status.progress,
        "chunk_info": {"current_chunk": 1, "total_chunks": 1, "chunk_progress": status.progress},
    }


async def _follow(websocket: WebSocket, services: Services, job_id: str) -> None:
    last: tuple[Any, ...] | None = None
    while True:
        try:
            record = await _transcription(services, job_id)
        except ApiError:
            await websocket.send_json(
                {
                    "type": "status",
                    "job_id": job_id,
                    "status": "not_found",
                    "message": NOT_FOUND_MESSAGE,
                    "progress": 0,
                }
            )
            await websocket.close(4404)
            return
        seen = (record.status, record.progress, record.message)
        if record.status == JobState.COMPLETED:
            try:
                result = await _result(services, record)
            except ApiError:
                result = None
            for segment in result.segments if result else []:
                await websocket.send_json({"type": "segment", **segment.model_dump(mode="json")})
            await websocket.send_json(_live_status(record))
            await websocket.close(1000)
            return
        if seen != last:
            await websocket.send_json(_live_status(record))
            last = seen
        if record.status == JobState.FAILED:
            await websocket.close(1000)
            return
        await asyncio.sleep(POLL_S)
