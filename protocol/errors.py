"""Error codes, the one HTTP error body and the one exception base that carries both."""

from enum import StrEnum
from typing import Any

from pydantic import BaseModel


class ErrorCode(StrEnum):
    """Machine-readable error codes shared by frames, the REST API and the WebSocket."""

    INVALID_AUDIO = "INVALID_AUDIO"
    INVALID_CONFIG = "INVALID_CONFIG"
    INVALID_REQUEST = "INVALID_REQUEST"
    UNSUPPORTED_FORMAT = "UNSUPPORTED_FORMAT"
    EMPTY_AUDIO = "EMPTY_AUDIO"
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    NOT_FOUND = "NOT_FOUND"
    UNAUTHORIZED = "UNAUTHORIZED"
    CAPACITY = "CAPACITY"
    MAX_DURATION_REACHED = "MAX_DURATION_REACHED"
    PROTOCOL = "PROTOCOL"
    TOO_LARGE = "TOO_LARGE"
    DOWNLOAD_FAILED = "DOWNLOAD_FAILED"
    FORBIDDEN_URL = "FORBIDDEN_URL"
    STREAM_OVERLOADED = "STREAM_OVERLOADED"
    ENGINE_FAILED = "ENGINE_FAILED"
    INTERNAL = "INTERNAL"
    NOT_READY = "NOT_READY"
    DIARIZATION_UNAVAILABLE = "DIARIZATION_UNAVAILABLE"
    NO_AUDIO = "NO_AUDIO"
    UNKNOWN_MID = "UNKNOWN_MID"
    PRECONDITION_FAILED = "PRECONDITION_FAILED"
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
    UPSTREAM_TIMEOUT = "UPSTREAM_TIMEOUT"
    NO_NETWORK = "NO_NETWORK"
    HTTP_ERROR = "HTTP_ERROR"
    BOT_LOST = "BOT_LOST"


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The body of every HTTP error: ``{"error": {"code", "message"}}``."""
    return {"error": {"code": code, "message": message, **extra}}


class ServiceError(Exception):
    """What a client is told: an :class:`ErrorCode`, a message and the HTTP status it maps to
    (plus headers such as ``Retry-After``). Every route answers it with :func:`error_body`."""

    def __init__(
        self, status: int, code: ErrorCode, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message)


class ErrorDetail(BaseModel):
    code: ErrorCode
    message: str


class ErrorBody(BaseModel):
    """Every HTTP error response (see :func:`error_body`)."""

    error: ErrorDetail


# the same body as a JSON schema, for the OpenAPI documents of the API and the bridge
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "enum": [code.value for code in ErrorCode]},
                "message": {"type": "string"},
            },
        }
    },
}
