"""``WS /v1/listen``: the client's control messages, the server's messages and close codes.

Between them the client sends binary s16le PCM and the server the caption frames of
``protocol.frames`` (``partial`` / ``final`` and error frames). Pure.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from protocol.errors import ErrorCode

SAMPLE_RATE = 16_000
ENCODINGS = ("pcm_s16le",)

CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013
CLOSE_UNAUTHORIZED = 4001
CLOSE_MAX_DURATION = 4002
CLOSE_IDLE = 4003


class ListenStart(BaseModel):
    """The client's first message."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["start"]
    language: str | None = Field(default=None, min_length=1, max_length=16)
    sample_rate: int = Field(default=SAMPLE_RATE, ge=8000, le=192_000)
    channels: int = Field(default=1, ge=1, le=2)
    encoding: str = "pcm_s16le"
    interim_results: bool = True
    room: str | None = Field(default=None, min_length=1, max_length=256)
    participant: str | None = Field(default=None, min_length=1, max_length=256)
    name: str | None = Field(default=None, max_length=256)

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        if value not in ENCODINGS:
            raise ValueError(f"unsupported encoding {value!r}; supported: {', '.join(ENCODINGS)}")
        return value


class ListenEnd(BaseModel):
    """The client is done sending audio."""

    type: Literal["end"] = "end"


class ListenReady(BaseModel):
    type: Literal["ready"] = "ready"
    session_id: str
    job_id: str | None = Field(description="the session's post-call job, once it ends")
    max_duration_seconds: float


class ListenCompleted(BaseModel):
    type: Literal["completed"] = "completed"
    job_id: str | None
    streamed_seconds: float
    reason: str


class ListenError(BaseModel):
    """Sent before the server closes the socket with the matching close code."""

    type: Literal["error"] = "error"
    code: ErrorCode
    message: str
