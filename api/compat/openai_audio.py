"""OpenAI's ``POST /v1/audio/transcriptions``: a batch job that the request waits for.

The upload becomes a normal batch job of the one job store (``GET /v1/transcripts/{id}``
shows it; its id is in the ``X-Roomscribe-Job`` header); the answer comes when the job ends,
or after ``api.sync_wait_s`` with a 504 that tells the client not to retry (the job goes on).
``whisper-1`` is ``postcall.batch_model``; roomscribe's own model names work too. ``prompt``
and ``temperature`` are accepted and not used (the decoder is beam search without a prompt).
Errors are OpenAI's ``{"error": {"message", "type", "param", "code"}}``.
"""

import math
import re
import zlib
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from api.errors import ApiError
from api.services import Services
from api.transcripts import _checked_language, _checked_model
from api.uploads import read_upload
from pipeline.jobs import (
    JobKind,
    JobNotFoundError,
    JobOptions,
    JobRecord,
    JobSource,
    JobState,
    wait_for,
)
from protocol.errors import ErrorCode
from protocol.transcript import Transcript

router = APIRouter(tags=["compat: OpenAI audio"])

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("word", "segment")
ALIASES = ("whisper-1",)
# the names verbose_json gives the languages Whisper hears most
LANGUAGE_NAMES = {
    "en": "english",
    "de": "german",
    "fr": "french",
    "es": "spanish",
    "it": "italian",
    "nl": "dutch",
    "pt": "portuguese",
    "ru": "russian",
    "pl": "polish",
    "uk": "ukrainian",
    "sv": "swedish",
    "tr": "turkish",
    "zh": "chinese",
    "ja": "japanese",
    "ko": "korean",
    "ar": "arabic",
    "hi": "hindi",
}
_FILE_ERRORS = {ErrorCode.UNSUPPORTED_FORMAT, ErrorCode.INVALID_AUDIO, ErrorCode.EMPTY_AUDIO}


class OpenAIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }
        return JSONResponse(body, status_code=self.status, headers=self.headers)


_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}


_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file", "model"],
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "model": {
                        "type": "string",
                        "description": "whisper-1 (= postcall.batch_model) or a roomscribe model",
                    },
                    "language": {"type": "string", "description": "ISO-639-1"},
                    "prompt": {"type": "string", "description": "accepted, not used"},
                    "response_format": {"type": "string", "enum": list(FORMATS)},
                    "temperature": {"type": "number", "description": "accepted, not used"},
                    "timestamp_granularities[]": {
                        "type": "array",
                        "items": {"type": "string", "enum": list(GRANULARITIES)},
                    },
                },
            }
        }
    },
}


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _fields(fields: dict[str, str], repeated: dict[str, list[str]]) -> dict[str, Any]:
    model = fields.get("model", "").strip()
    if not model:
        raise OpenAIError(400, "you must provide a model parameter", param="model")
    response_format = fields.get("response_format", "json")
    if response_format not in FORMATS:
        raise OpenAIError(
            400,
            f"'{response_format}' is not one of {list(FORMATS)} - 'response_format'",
            param="response_format",
            code="invalid_value",
        )
    granularities = [
        value
        for name in ("timestamp_granularities[]", "timestamp_granularities")
        for value in repeated.get(name, [])
    ]
    unknown = [g for g in granularities if g not in GRANULARITIES]
    if unknown:
        raise OpenAIError(
            400,
            f"'{unknown[0]}' is not one of {list(GRANULARITIES)} - 'timestamp_granularities'",
            param="timestamp_granularities",
            code="invalid_value",
        )
    if granularities and response_format != "verbose_json":
        raise OpenAIError(
            400,
            "timestamp_granularities is only supported with response_format verbose_json",
            param="timestamp_granularities",
        )
    temperature = fields.get("temperature")
    if temperature is not None:
        try:
            if not 0.0 <= float(temperature) <= 1.0:
                raise ValueError(temperature)
        except ValueError:
            raise OpenAIError(
                400, "temperature must be a number from 0 to 1", param="temperature"
            ) from None
    return {
        "model": model,
        "language": fields.get("language") or None,
        "response_format": response_format,
        "granularities": granularities or ["segment"],
    }


async def _submit(services: Services, wanted: dict[str, Any], upload: Any) -> JobRecord:
    settings = services.settings
    model = wanted["model"]
    if model in ALIASES:
        model = settings.postcall.batch_model
    else:
        try:
            await _checked_model(model, services)
        except ApiError as exc:
            raise OpenAIError(
                404,
                f"The model '{wanted['model']}' does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            ) from exc
    try:
        language = _checked_language(model, wanted["language"])
    except ApiError as exc:
        raise OpenAIError(400, exc.message, param="language", code="unsupported_language") from exc
    record = JobRecord.queued(
        JobKind.BATCH,
        JobSource(type="upload", filename=upload.file.filename, size=upload.size),
        JobOptions(model=model, language=language),
        settings.postcall.webhook_url,
    )
    await services.store.submit(record, upload.file.file)
    services.metrics.jobs_submitted.labels(JobKind.BATCH.value).inc()
    services.metrics.upload_bytes.inc(upload.size)
    return record


def _failure(record: JobRecord) -> OpenAIError:
    error = record.error
    code, message = (error.code, error.message) if error else (ErrorCode.INTERNAL, "failed")
    if code in _FILE_ERRORS:
        return OpenAIError(400, f"Invalid file: {message}", param="file", code="invalid_value")
    if code == ErrorCode.MODEL_NOT_FOUND:
        return OpenAIError(404, message, param="model", code="model_not_found")
    return OpenAIError(
        500, message, code=code.lower(), kind="server_error", headers={"x-should-retry": "false"}
    )


def _text(transcript: Transcript) -> str:
    return " ".join(" ".join(s.text.split()) for s in transcript.segments if s.text.strip())


def _verbose(transcript: Transcript, granularities: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": LANGUAGE_NAMES.get(transcript.language or "", transcript.language or ""),
        "duration": transcript.duration,
        "text": _text(transcript),
    }
    if "segment" in granularities:
        segments = []
        for number, segment in enumerate(transcript.segments):
            text = " ".join(segment.text.split())
            confidences = [max(w.confidence, 1e-6) for w in segment.words]
            encoded = text.encode()
            segments.append(
                {
                    "id": number,
                    "seek": int(segment.start * 100),
                    "start": segment.start,
                    "end": segment.end,
                    "text": f" {text}",
                    "tokens": [],
                    "temperature": 0.0,
                    "avg_logprob": (
                        sum(math.log(c) for c in confidences) / len(confidences)
                        if confidences
                        else 0.0
                    ),
                    "compression_ratio": len(encoded) / max(len(zlib.compress(encoded)), 1),
                    "no_speech_prob": 0.0,
                }
            )
        body["segments"] = segments
    if "word" in granularities:
        body["words"] = [
            {"word": w.word.strip(), "start": w.start, "end": w.end}
            for s in transcript.segments
            for w in s.words
            if w.word.strip()
        ]
    body["usage"] = {"type": "duration", "seconds": math.ceil(transcript.duration)}
    return body


@router.post(
    "/v1/audio/transcriptions",
    openapi_extra={"requestBody": _BODY},
    responses={
        200: {
            "description": "the transcript in response_format",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "text/plain": {"schema": {"type": "string"}},
                "application/x-subrip": {"schema": {"type": "string"}},
                "text/vtt": {"schema": {"type": "string"}},
            },
        },
        400: _error("bad input"),
        404: _error("unknown model"),
        415: _error("not multipart/form-data"),
        500: _error("the job failed"),
        504: _error("still running after the wait (the job goes on)"),
    },
)
async def create_transcription(request: Request) -> Response:
    """Transcribe an uploaded file and answer when done, as OpenAI's endpoint does."""
    try:
        return await _transcribe(request)
    except OpenAIError as exc:
        return exc.response()


async def _transcribe(request: Request) -> Response:
    services = _services(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        raise OpenAIError(415, "send multipart/form-data with a file part", param="file")
    limit = int(services.settings.api.max_upload_mb * 1024 * 1024)
    try:
        upload = await read_upload(request, limit)
    except ApiError as exc:
        raise OpenAIError(exc.status, exc.message, param="file") from exc
    try:
        if upload.file is None:
            raise OpenAIError(400, "you must provide a file parameter", param="file")
        wanted = _fields(upload.fields, upload.repeated)
        record = await _submit(services, wanted, upload)
    finally:
        if upload.file is not None:
            await upload.file.close()
    headers = {"X-Roomscribe-Job": record.id}
    wait_s = services.settings.api.sync_wait_s
    try:
        record = await wait_for(services.store, record.id, limit_s=wait_s, poll_s=0.2)
    except TimeoutError:
        raise OpenAIError(
            504,
            f"still transcribing after {wait_s:.0f} s; GET /v1/transcripts/{record.id}",
            code="timeout",
            kind="server_error",
            headers={**headers, "x-should-retry": "false"},
        ) from None
    except JobNotFoundError:
        raise OpenAIError(
            404, f"job {record.id} was deleted before it finished", code="job_deleted"
        ) from None
    if record.status != JobState.COMPLETED:
        raise _failure(record)
    transcript = await services.store.get_transcript(record.id)
    fmt = wanted["response_format"]
    if fmt == "json":
        usage = {"type": "duration", "seconds": math.ceil(transcript.duration)}
        return JSONResponse({"text": _text(transcript), "usage": usage}, headers=headers)
    if fmt == "text":
        return PlainTextResponse(_text(transcript) + "\n", headers=headers)
    if fmt in ("srt", "vtt"):
        data = (await services.store.get_file(record.id, f"transcript.{fmt}")).decode()
        if fmt == "vtt":
            data = re.sub(r"<v [^>]*>", "", data)  # one speaker: no voice spans, as OpenAI
        media = "application/x-subrip" if fmt == "srt" else "text/vtt"
        return Response(data, media_type=f"{media}; charset=utf-8", headers=headers)
    return JSONResponse(_verbose(transcript, wanted["granularities"]), headers=headers)
