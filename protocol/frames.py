"""Frames published on NATS and sent over the WebSocket.

Every frame is an immutable pydantic record with a schema version ``v`` and a ``type``
discriminator, so a consumer can parse any frame with :func:`parse_frame`.
"""

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

SCHEMA_VERSION: Literal[1] = 1


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Word(_Record):
    word: str
    start: float = Field(description="seconds since the call started (audio time)")
    end: float
    confidence: float = Field(ge=0.0, le=1.0)


class CaptionFrame(_Record):
    """A partial (interim, may still change) or final caption of one speaker's utterance."""

    v: Literal[1] = SCHEMA_VERSION
    type: Literal["partial", "final"]
    room: str
    participant: str
    name: str | None = None
    segment_id: str = Field(
        description="stable from the first partial of an utterance to its final"
    )
    rev: int = Field(ge=0, description="revision within the segment; the final has the highest")
    seq: int = Field(ge=0, description="strictly increasing per participant stream")
    start: float = Field(ge=0.0, description="seconds since the call started (audio time)")
    end: float = Field(ge=0.0)
    text: str
    words: list[Word] = Field(default_factory=list)
    language: str | None = None
    model: str
    stable_chars: int = Field(
        default=0, ge=0, description="leading characters of text that later revisions keep"
    )

    @model_validator(mode="after")
    def _check(self) -> "CaptionFrame":
        if self.end < self.start:
            raise ValueError(f"end {self.end} before start {self.start}")
        if self.type == "final" and self.text.strip() and not self.words:
            raise ValueError("a final caption with text must carry its words")
        return self


class EventType(StrEnum):
    CALL_STARTED = "call.started"
    CALL_ENDED = "call.ended"
    PARTICIPANT_JOINED = "participant.joined"
    PARTICIPANT_LEFT = "participant.left"


class EventFrame(_Record):
    """Call-level life events, published on ``<prefix>.v1.events.<room>``."""

    v: Literal[1] = SCHEMA_VERSION
    type: Literal["event"] = "event"
    event: EventType
    room: str
    call_id: str
    participant: str | None = None
    name: str | None = None
    at: float = Field(description="wall clock, seconds since the epoch")
    audio_time: float = Field(default=0.0, ge=0.0, description="seconds since the call started")
    reason: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class ErrorFrame(_Record):
    v: Literal[1] = SCHEMA_VERSION
    type: Literal["error"] = "error"
    code: str
    message: str
    room: str | None = None
    participant: str | None = None


Frame = Annotated[CaptionFrame | EventFrame | ErrorFrame, Field(discriminator="type")]
_frame_adapter: TypeAdapter[CaptionFrame | EventFrame | ErrorFrame] = TypeAdapter(Frame)


def parse_frame(data: bytes | str) -> CaptionFrame | EventFrame | ErrorFrame:
    """Parse one JSON frame; raises ``pydantic.ValidationError`` on anything malformed."""
    return _frame_adapter.validate_json(data)


def frame_schemas() -> dict[str, Any]:
    """JSON Schema of every frame, keyed by model name."""
    return {
        model.__name__: model.model_json_schema()
        for model in (CaptionFrame, EventFrame, ErrorFrame)
    }
