"""Cross-origin access for browser pages on other origins (``api.cors_origins``).

The outermost middleware, so every response carries the headers: errors from auth and body
limits, and the 500 of a crashed handler, included. A preflight is answered here, before
auth, since browsers never send credentials on it. Nothing changes for a request without
``Origin`` or from an origin that is not listed (the browser then blocks the page).
"""

import re
from collections.abc import Sequence

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
EXPOSED_HEADERS = "Location, ETag, Link, Accept-Post, Retry-After, X-Request-ID, X-Process-Time-Ms"
PREFLIGHT_MAX_AGE_S = 600


class CorsPolicy:
    def __init__(
        self, origins: Sequence[str], accept_post: Sequence[tuple[re.Pattern[str], str]] = ()
    ) -> None:
        self.any = "*" in origins
        self.origins = {origin.rstrip("/").lower() for origin in origins if origin != "*"}
        self.accept_post = list(accept_post)

    def allow_origin(self, origin: str) -> str | None:
        """The ``Access-Control-Allow-Origin`` value for ``origin``; None = not allowed."""
        if self.any:
            return "*"
        return origin if origin.lower() in self.origins else None

    def accept_post_for(self, path: str) -> str | None:
        return next((value for pattern, value in self.accept_post if pattern.fullmatch(path)), None)


class CorsMiddleware:
    def __init__(self, app: ASGIApp, policy: CorsPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        allowed = self.policy.allow_origin(origin) if origin else None
        if allowed is None:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await self._preflight(scope, headers, allowed)(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                out["Access-Control-Allow-Origin"] = allowed
                out["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
                out.add_vary_header("Origin")
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _preflight(self, scope: Scope, headers: Headers, allowed: str) -> Response:
        out = {
            "Access-Control-Allow-Origin": allowed,
            "Access-Control-Allow-Methods": ALLOWED_METHODS,
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
            "Access-Control-Expose-Headers": EXPOSED_HEADERS,
            "Vary": "Origin",
        }
        requested = headers.get("access-control-request-headers")
        if requested:
            out["Access-Control-Allow-Headers"] = requested
        accept_post = self.policy.accept_post_for(scope["path"])
        if accept_post:
            out["Accept-Post"] = accept_post
        return Response(status_code=204, headers=out)
