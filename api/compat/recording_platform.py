"""The recording platform's asynchronous transcription flow, over recorded calls.

* ``POST /api/v1/recording/{id}/create_transcript/``: a recording is a call this service
  recorded (its id is the call id). ``diarization.use_separate_streams_when_available``
  true: a post-call job over each participant's own track (who spoke is exact); false or
  absent: a batch job over the call's mix, diarized. At most ``MAX_TRANSCRIPTS`` transcripts
  per recording that did not fail; delete one to make room.
* ``GET /api/v1/transcript/{id}/``: the transcript artifact; ``data.download_url`` serves the
  words JSON, one entry per utterance (``participant``, ``language_code``, ``words`` with
  ``start_timestamp`` / ``end_timestamp``: ``relative`` seconds from the call's start and
  ``absolute`` ISO 8601 times from the call's wall clock). With API keys set the URL carries
  its own expiring signature, so it opens without the key, as a presigned URL does.
* ``DELETE /api/v1/transcript/{id}/``: removes the job and its results;
  ``GET /api/v1/transcript/?recording_id=&status_code=`` lists them (one page).
* Webhooks to ``postcall.recording_platform_webhook_url``: ``recording.done`` (a call handed
  over; ``recording.failed`` with sub code ``no_audio`` when nobody was recorded),
  ``transcript.done`` / ``transcript.failed`` / ``transcript.deleted`` in the platform's
  ``{event, data: {data: {code, sub_code, updated_at}, recording, transcript, bot}}`` shape,
  sent, signed and retried by the one webhook sender (relayed from the core's job events,
  and swept at start so none is lost while the service was down).

The job (its record, results and this adapter's ``recording_platform.json`` beside them) is a
normal job of the one job store: ``GET /v1/transcripts/{id}`` shows it too. Errors have the
platform's ``{"detail": ...}`` shape (field errors: ``{"field": ["message"]}``).
"""

import asyncio
import contextlib
import hashlib
import hmac
import io
import json
import logging
import re
import tempfile
import time
import wave
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from nats.aio.msg import Msg
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.bodies import JsonBody
from api.errors import ApiError, errors
from api.services import Services
from api.transcripts import _checked_language
from pipeline.audio_io import SAMPLE_RATE
from pipeline.jobs import JobKind, JobNotFoundError, JobOptions, JobRecord, JobSource, JobState
from pipeline.mixdown import mix_call
from pipeline.postcall import fetch_call
from pipeline.recorder import CallRecord, recorded_calls
from protocol.subjects import Subjects
from protocol.transcript import Transcript
from protocol.webhooks import WebhookEvent, WebhookEventType

log = logging.getLogger("roomscribe.compat.recording_platform")

MAX_TRANSCRIPTS = 10
MARKER = "recording_platform.json"
DOWNLOAD_PREFIX = "/api/v1/download/transcript/"
DOWNLOAD_TTL_S = 6 * 3600
SWEEP_WINDOW_S = 24 * 3600


class PlatformError(Exception):
    """Answered as the platform answers: ``body`` as JSON with ``status``."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(json.dumps(body))
        self.status = status
        self.body = body


def _detail(status: int, message: str) -> PlatformError:
    return PlatformError(status, {"detail": message})


class _PlatformRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except PlatformError as exc:
                return JSONResponse(exc.body, status_code=exc.status)

        return answer


def _documented(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"type": "object"}}},
    }


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _documented("invalid request: {field: [message]} or {detail}"),
    404: _documented("no such recording or transcript: {detail}"),
}


# --- wire records ---------------------------------------------------------------------------


class _Open(JsonBody):
    model_config = ConfigDict(extra="allow")


class RecallAsyncOptions(_Open):
    language_code: str = Field(default="auto", max_length=16, description="auto: detect")


class Provider(JsonBody):
    model_config = ConfigDict(extra="forbid")

    recallai_async: RecallAsyncOptions


class Diarization(_Open):
    use_separate_streams_when_available: bool = False


class CreateTranscript(JsonBody):
    model_config = ConfigDict(extra="forbid")

    provider: Provider
    diarization: Diarization = Field(default_factory=Diarization)
    metadata: dict[str, Any] = Field(default_factory=dict)


class Stored(BaseModel):
    """This adapter's file beside the job's results: what the artifact answers besides it."""

    recording_id: str
    room: str
    call_started_at: float
    participants: list[dict[str, Any]]
    provider: dict[str, Any]
    diarization: dict[str, Any]
    metadata: dict[str, Any]
    created_at: float


class Artifact(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    recording: dict[str, Any]
    created_at: str
    expires_at: str | None
    status: dict[str, Any]
    data: dict[str, Any]
    diarization: dict[str, Any]
    metadata: dict[str, Any]
    provider: dict[str, Any]


class Timestamp(BaseModel):
    absolute: str | None
    relative: float


class WordEntry(BaseModel):
    text: str
    start_timestamp: Timestamp
    end_timestamp: Timestamp


class Participant(BaseModel):
    id: int
    name: str | None
    is_host: bool | None = None
    platform: str | None = None
    extra_data: dict[str, Any] | None = None
    email: str | None = None


class Utterance(BaseModel):
    participant: Participant
    language_code: str
    words: list[WordEntry]


# --- helpers --------------------------------------------------------------------------------


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _field_errors(exc: ValidationError) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "non_field_errors"
        found.setdefault(where, []).append(error["msg"])
    return found


def _parse(raw: bytes) -> Any:
    """JSON; a trailing comma (as the platform's own curl example has) is forgiven."""
    try:
        return json.loads(raw)
    except ValueError:
        pass
    try:
        return json.loads(re.sub(rb",(\s*[}\]])", rb"\1", raw))
    except ValueError as exc:
        raise _detail(400, f"JSON parse error - {exc}") from exc


async def _stored(services: Services, job_id: str) -> Stored:
    try:
        return Stored.model_validate_json(await services.store.get_file(job_id, MARKER))
    except JobNotFoundError:
        raise _detail(404, "Not found.") from None


async def _job(services: Services, transcript_id: str) -> tuple[JobRecord, Stored]:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", transcript_id):
        raise _detail(404, "Not found.")
    try:
        record = await services.store.get(transcript_id)
    except JobNotFoundError:
        raise _detail(404, "Not found.") from None
    return record, await _stored(services, transcript_id)


def _status(record: JobRecord) -> dict[str, Any]:
    code = {JobState.COMPLETED: "done", JobState.FAILED: "failed"}.get(record.status, "processing")
    sub_code = record.error.code.lower() if record.error is not None else None
    return {"code": code, "sub_code": sub_code, "updated_at": _iso(record.updated_at)}


def _signature(secret: str, transcript_id: str, expires: int) -> str:
    message = f"{transcript_id}.{expires}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def _secret(services: Services) -> str:
    return "\n".join(services.settings.api.api_keys)


def _download_url(request: Request, services: Services, transcript_id: str) -> str:
    expires = int(time.time()) + DOWNLOAD_TTL_S
    base = str(request.base_url).rstrip("/")
    url = f"{base}{DOWNLOAD_PREFIX}{transcript_id}.json?expires={expires}"
    secret = _secret(services)
    if secret:
        url += f"&signature={_signature(secret, transcript_id, expires)}"
    return url


def _artifact(
    record: JobRecord, stored: Stored, download_url: str | None, **extra: Any
) -> dict[str, Any]:
    return Artifact(
        id=record.id,
        recording={"id": stored.recording_id, "metadata": {}},
        created_at=_iso(stored.created_at),
        expires_at=None,
        status=_status(record),
        data={"download_url": download_url, "provider_data_download_url": None},
        diarization=stored.diarization,
        metadata=stored.metadata,
        provider=stored.provider,
        **extra,
    ).model_dump()


def _bot(recording_id: str, room: str) -> dict[str, Any]:
    return {"id": recording_id, "metadata": {"room": room}}


def _event(
    name: str, recording_id: str, room: str, sub_code: str | None = None, **artifacts: Any
) -> dict[str, Any]:
    status = {"code": name.split(".")[1], "sub_code": sub_code, "updated_at": _iso(time.time())}
    return {
        "event": name,
        "data": {
            "data": status,
            **artifacts,
            "recording": {"id": recording_id, "metadata": {"room": room}},
            "bot": _bot(recording_id, room),
        },
    }


def utterances(transcript: Transcript, stored: Stored) -> list[dict[str, Any]]:
    """The words JSON: one entry per segment, in time order, times from the call's start."""
    numbers: dict[str, int] = {}
    names: dict[str, str | None] = {}
    for participant in stored.participants:
        numbers.setdefault(participant["participant"], len(numbers) + 1)
        names[participant["participant"]] = participant.get("name")
    for speaker in transcript.speakers:
        numbers.setdefault(speaker.id, len(numbers) + 1)
        names.setdefault(speaker.id, speaker.name)
    per_track = stored.diarization.get("use_separate_streams_when_available", False)
    language = transcript.language or "en"
    entries = []
    for segment in sorted(transcript.segments, key=lambda s: (s.start, s.end)):
        spans = [(w.word.strip(), w.start, w.end) for w in segment.words if w.word.strip()]
        if not spans and segment.text.strip():
            tokens = segment.text.split()
            step = (segment.end - segment.start) / len(tokens)
            spans = [
                (t, segment.start + i * step, segment.start + (i + 1) * step)
                for i, t in enumerate(tokens)
            ]
        if not spans:
            continue
        extra = {"participant": segment.speaker} if per_track else {"speaker": segment.speaker}

        def stamp(at: float) -> Timestamp:
            return Timestamp(absolute=_iso(stored.call_started_at + at), relative=round(at, 3))

        entries.append(
            Utterance(
                participant=Participant(
                    id=numbers[segment.speaker],
                    name=names.get(segment.speaker),
                    platform="roomscribe",
                    extra_data=extra,
                ),
                language_code=language,
                words=[
                    WordEntry(text=text, start_timestamp=stamp(start), end_timestamp=stamp(end))
                    for text, start, end in spans
                ],
            ).model_dump()
        )
    return entries


def _wav(samples: Any) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(SAMPLE_RATE)
        file.writeframes(samples.astype("<i2").tobytes())
    return out.getvalue()


async def _transcripts_of(services: Services, recording_id: str) -> list[JobRecord]:
    """The recording's transcripts made here that did not fail."""
    found = []
    for record in await services.store.all():
        if record.source.call_id != recording_id or record.status == JobState.FAILED:
            continue
        with contextlib.suppress(JobNotFoundError):
            await services.store.get_file(record.id, MARKER)
            found.append(record)
    return found


# --- webhooks -------------------------------------------------------------------------------


class Relay:
    """Turns the core's job events into the platform's webhooks (deduplicated by key)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.url = services.settings.postcall.recording_platform_webhook_url
        self._sub: Any = None

    async def start(self) -> None:
        if not self.url:
            return
        subjects = Subjects(self.services.settings.nats.subject_prefix)
        self._sub = await self.services.nc.subscribe(subjects.job_events("*"), cb=self._on_event)
        await self.sweep()

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _on_event(self, msg: Msg) -> None:
        try:
            event = WebhookEvent.model_validate_json(msg.data)
            if event.type == WebhookEventType.CALL_ENDED:
                await self.recording(event.data)
            else:
                await self.transcript(str(event.data.get("id", "")))
        except Exception:
            log.exception("could not relay job event %r", msg.data[:200])

    async def sweep(self) -> None:
        """Relay what finished while no relay listened (a no-op for what went out before)."""
        services = self.services
        since = time.time() - SWEEP_WINDOW_S
        for call in await asyncio.to_thread(recorded_calls, services.settings.calls_dir):
            if call.handed_over and call.job_id and (call.ended_at or 0) >= since:
                await self.recording(
                    {
                        "call_id": call.call_id,
                        "room": call.room,
                        "job_id": call.job_id,
                        "participants": [{"participant": p.participant} for p in call.participants],
                    }
                )
        for record in await services.store.all():
            if record.status.terminal and record.source.call_id and record.updated_at >= since:
                await self.transcript(record.id)

    async def recording(self, data: dict[str, Any]) -> None:
        assert self.url is not None
        call_id, room, job_id = str(data["call_id"]), str(data["room"]), str(data["job_id"])
        if data.get("participants"):
            name, payload = "recording.done", _event("recording.done", call_id, room)
        else:
            name = "recording.failed"
            payload = _event(name, call_id, room, sub_code="no_audio")
        await self.services.notifier.relay(
            job_id, name, WebhookEventType.CALL_ENDED, data, payload, self.url
        )

    async def transcript(self, job_id: str) -> None:
        assert self.url is not None
        store = self.services.store
        try:
            record = await store.get(job_id)
            stored = Stored.model_validate_json(await store.get_file(job_id, MARKER))
        except JobNotFoundError:
            return  # not a transcript made here
        if not record.status.terminal:
            return
        done = record.status == JobState.COMPLETED
        name = "transcript.done" if done else "transcript.failed"
        sub_code = None if done or record.error is None else record.error.code.lower()
        payload = _event(
            name,
            stored.recording_id,
            stored.room,
            sub_code=sub_code,
            transcript={"id": record.id, "metadata": stored.metadata},
        )
        event = WebhookEventType.TRANSCRIPT_DONE if done else WebhookEventType.TRANSCRIPT_FAILED
        data = {"id": record.id, "status": record.status.value}
        await self.services.notifier.relay(job_id, name, event, data, payload, self.url)

    async def deleted(self, record: JobRecord, stored: Stored) -> None:
        if not self.url:
            return
        payload = _event(
            "transcript.deleted",
            stored.recording_id,
            stored.room,
            transcript={"id": record.id, "metadata": stored.metadata},
        )
        data = {"id": record.id, "status": "deleted"}
        failed = record.status == JobState.FAILED
        event = WebhookEventType.TRANSCRIPT_FAILED if failed else WebhookEventType.TRANSCRIPT_DONE
        await self.services.notifier.relay(
            record.id, "transcript.deleted", event, data, payload, self.url
        )


@asynccontextmanager
async def _relaying(app: FastAPI) -> AsyncIterator[None]:
    relay = Relay(app.state.services)
    app.state.recording_platform_relay = relay
    await relay.start()
    try:
        yield
    finally:
        await relay.stop()


router = APIRouter(
    tags=["compat: recording platform"], route_class=_PlatformRoute, lifespan=_relaying
)


# --- routes ---------------------------------------------------------------------------------


async def _call(services: Services, recording_id: str, directory: Path, audio: bool) -> CallRecord:
    """The recorded call from the object store (its tracks too with ``audio``)."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", recording_id) or recording_id in (".", ".."):
        raise _detail(404, "Not found.")
    if not await services.store.has_call(recording_id):
        raise _detail(404, "Not found.")
    if audio:
        return await fetch_call(services.store, recording_id, directory)
    await services.store.download_call_file(recording_id, "call.json", directory / "call.json")
    return CallRecord.load(directory)


_CREATE_BODY = {
    "required": True,
    "content": {"application/json": {"schema": CreateTranscript.model_json_schema()}},
}


@router.post(
    "/api/v1/recording/{recording_id}/create_transcript/",
    status_code=200,
    response_model=Artifact,
    responses=_ERRORS,
    openapi_extra={"requestBody": _CREATE_BODY},
)
async def create_transcript(request: Request, recording_id: str) -> JSONResponse:
    """Transcribe a recorded call: per participant track, or the mix diarized."""
    services = _services(request)
    settings = services.settings
    raw = await request.body()
    if not raw.strip():
        raise PlatformError(400, {"provider": ["This field is required."]})
    try:
        body = CreateTranscript.model_validate(_parse(raw))
    except ValidationError as exc:
        raise PlatformError(400, _field_errors(exc)) from exc
    language_code = body.provider.recallai_async.language_code
    separate = body.diarization.use_separate_streams_when_available
    with tempfile.TemporaryDirectory(prefix="roomscribe-recording-") as directory:
        call = await _call(services, recording_id, Path(directory), audio=not separate)
        taken = await _transcripts_of(services, recording_id)
        if len(taken) >= MAX_TRANSCRIPTS:
            raise _detail(
                400,
                f"Only {MAX_TRANSCRIPTS} successful transcripts are allowed per recording; "
                "delete one (DELETE /api/v1/transcript/{id}/) before creating another.",
            )
        model = settings.postcall.model if separate else settings.postcall.batch_model
        try:
            language = _checked_language(model, None if language_code == "auto" else language_code)
        except ApiError as exc:
            raise PlatformError(
                400, {"provider.recallai_async.language_code": [exc.message]}
            ) from exc
        hook = settings.postcall.webhook_url
        if separate:
            record = JobRecord.queued(
                JobKind.POSTCALL,
                JobSource(type="call", call_id=recording_id),
                JobOptions(language=language),
                hook,
            )
            audio = None
        else:
            samples, tracks = await asyncio.to_thread(mix_call, call)
            record = JobRecord.queued(
                JobKind.BATCH,
                JobSource(
                    type="upload",
                    filename=f"{recording_id}.wav",
                    size=samples.size * 2 + 44,
                    call_id=recording_id,
                ),
                JobOptions(language=language, diarize=tracks > 0, speakers_expected=tracks or None),
                hook,
            )
            audio = await asyncio.to_thread(_wav, samples) if tracks else b""  # EMPTY_AUDIO
    stored = Stored(
        recording_id=recording_id,
        room=call.room,
        call_started_at=call.started_at,
        participants=[{"participant": p.participant, "name": p.name} for p in call.participants],
        provider=body.provider.model_dump(),
        diarization=body.diarization.model_dump(),
        metadata=body.metadata,
        created_at=record.created_at,
    )
    await services.store.put_file(record.id, MARKER, stored.model_dump_json().encode())
    await services.store.submit(record, audio)
    services.metrics.jobs_submitted.labels(record.kind.value).inc()
    return JSONResponse(_artifact(record, stored, None), status_code=200)


class TranscriptPage(BaseModel):
    next: str | None
    previous: str | None
    results: list[Artifact]


@router.get("/api/v1/transcript/", response_model=TranscriptPage, responses=errors(422))
async def list_transcripts(
    request: Request,
    recording_id: str | None = Query(default=None, max_length=128),
    status_code: Literal["processing", "done", "failed"] | None = Query(default=None),
) -> JSONResponse:
    """Transcripts made here, newest first; one page holds them all."""
    services = _services(request)
    found = []
    for record in sorted(await services.store.all(), key=lambda r: r.id, reverse=True):
        if recording_id is not None and record.source.call_id != recording_id:
            continue
        if not record.source.call_id or (
            status_code is not None and _status(record)["code"] != status_code
        ):
            continue
        try:
            stored = Stored.model_validate_json(await services.store.get_file(record.id, MARKER))
        except JobNotFoundError:
            continue
        done = record.status == JobState.COMPLETED
        url = _download_url(request, services, record.id) if done else None
        found.append(_artifact(record, stored, url))
    return JSONResponse({"next": None, "previous": None, "results": found})


@router.get(
    "/api/v1/transcript/{transcript_id}/", response_model=Artifact, responses={404: _ERRORS[404]}
)
async def retrieve_transcript(request: Request, transcript_id: str) -> JSONResponse:
    services = _services(request)
    record, stored = await _job(services, transcript_id)
    url = (
        _download_url(request, services, record.id) if record.status == JobState.COMPLETED else None
    )
    return JSONResponse(_artifact(record, stored, url))


@router.delete(
    "/api/v1/transcript/{transcript_id}/", status_code=204, responses={404: _ERRORS[404]}
)
async def delete_transcript(request: Request, transcript_id: str) -> Response:
    """Remove the transcript (its job, results and webhook log)."""
    services = _services(request)
    record, stored = await _job(services, transcript_id)
    with contextlib.suppress(JobNotFoundError):
        await services.store.delete(record.id)
    await services.notifier.forget(record.id)
    relay: Relay | None = getattr(request.app.state, "recording_platform_relay", None)
    if relay is not None:
        await relay.deleted(record, stored)
    return Response(status_code=204)


@router.get(
    DOWNLOAD_PREFIX + "{transcript_id}.json",
    response_model=list[Utterance],
    responses={403: _documented("bad or expired signature"), 404: _ERRORS[404]},
)
async def download_transcript(
    request: Request, transcript_id: str, expires: int = 0, signature: str = ""
) -> JSONResponse:
    """The words JSON behind ``data.download_url`` (signed when API keys are set)."""
    services = _services(request)
    secret = _secret(services)
    if secret and (
        expires < time.time()
        or not hmac.compare_digest(
            signature.encode(), _signature(secret, transcript_id, expires).encode()
        )
    ):
        raise _detail(403, "This download URL is invalid or has expired.")
    record, stored = await _job(services, transcript_id)
    if record.status != JobState.COMPLETED:
        raise _detail(404, "Not found.")
    try:
        transcript = await services.store.get_transcript(record.id)
    except JobNotFoundError:
        raise _detail(404, "Not found.") from None
    return JSONResponse(utterances(transcript, stored))
