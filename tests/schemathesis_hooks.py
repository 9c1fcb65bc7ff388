"""Schemathesis hooks for the fuzz test: SDP bodies are plain text."""

from typing import Any

import schemathesis


@schemathesis.serializer("application/sdp", "application/trickle-ice-sdpfrag")
def text_body(ctx: Any, value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else str(value).encode()
