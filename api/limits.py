"""Request bodies are bounded while they are read: size (413) and time (408).

JSON, SDP and other small bodies: at most ``api.max_json_kb`` KiB, complete within
``api.body_timeout_s``. Multipart uploads: at most ``api.max_upload_mb`` (plus form fields),
and never ``api.upload_idle_timeout_s`` without a byte. A declared ``Content-Length`` over the
limit is refused before anything is read.
"""

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError, error_response
from api.metrics import ApiMetrics
from api.uploads import MAX_FIELD_BYTES
from config.settings import ApiSettings
from protocol.errors import ErrorCode


def _too_large(limit: int) -> ApiError:
    return ApiError(413, ErrorCode.TOO_LARGE, f"request body is larger than {limit} bytes")


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, settings: ApiSettings, metrics: ApiMetrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics

    def _bounds(self, scope: Scope) -> tuple[int, float, bool]:
        """(byte limit, seconds, whether the seconds are per chunk rather than in total)."""
        content_type = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
        if content_type.split(b";")[0].strip().lower() == b"multipart/form-data":
            limit = int(self.settings.max_upload_mb * 1024 * 1024) + MAX_FIELD_BYTES
            return limit, self.settings.upload_idle_timeout_s, True
        return self.settings.max_json_kb * 1024, self.settings.body_timeout_s, False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, seconds, per_chunk = self._bounds(scope)
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        if declared.isdigit() and int(declared) > limit:
            self.metrics.refused.labels("body_too_large").inc()
            error = _too_large(limit)
            await error_response(error.status, error.code, error.message)(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        received = 0
        complete = False

        async def bounded() -> Message:
            nonlocal received, complete, deadline
            if complete:
                return await receive()
            if per_chunk:
                deadline = loop.time() + seconds
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                self.metrics.refused.labels("body_timeout").inc()
                raise ApiError(
                    408,
                    ErrorCode.REQUEST_TIMEOUT,
                    f"the request body did not arrive within {seconds:g} s",
                    headers={"Connection": "close"},
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    self.metrics.refused.labels("body_too_large").inc()
                    raise _too_large(limit)
                complete = not message.get("more_body", False)
            return message

        await self.app(scope, bounded, send)
