"""Schemathesis hooks for the fuzz test: SDP bodies are plain text; multipart forms carry text."""

from typing import Any

import schemathesis


@schemathesis.serializer("application/sdp", "application/trickle-ice-sdpfrag")
def text_body(ctx: Any, value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else str(value).encode()


def _sendable_part(name: str, value: Any) -> bool:
    if isinstance(value, list):
        return name.endswith("[]") and bool(value) and all(isinstance(v, str) for v in value)
    return isinstance(value, (str, int, float, bool))


@schemathesis.hook
def filter_body(ctx: Any, body: Any) -> bool:
    """A form part is text: null, an object or a list for a field that is not an array reach
    the server as an empty or repeated part, a request the schema allows. Schemathesis reads
    such a case as an invalid one accepted (its check of the form as sent fails on the binary
    file part), so the case is not generated."""
    if not isinstance(body, dict) or "file" not in body:
        return True
    return all(_sendable_part(name, value) for name, value in body.items() if name != "file")
