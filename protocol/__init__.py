"""The wire contract of roomscribe: frames, subjects and error codes. Pure, no I/O."""

from protocol.errors import ErrorCode
from protocol.frames import (
    SCHEMA_VERSION,
    CaptionFrame,
    ErrorFrame,
    EventFrame,
    EventType,
    Frame,
    Word,
    frame_schemas,
    parse_frame,
)
from protocol.subjects import Subjects, decode_token, encode_token

__all__ = [
    "SCHEMA_VERSION",
    "CaptionFrame",
    "ErrorCode",
    "ErrorFrame",
    "EventFrame",
    "EventType",
    "Frame",
    "Subjects",
    "Word",
    "decode_token",
    "encode_token",
    "frame_schemas",
    "parse_frame",
]
