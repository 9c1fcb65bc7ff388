"""One access policy for every HTTP route of the app.

With ``api.api_keys`` set, every path needs ``Authorization: Bearer <API key>`` (or the bare
key, as the recording platform's clients send it) unless
``api.public_paths`` lists it (an entry ending in ``*`` is a prefix). Paths under a scoped
prefix (the bridge's) also accept that scope's narrower tokens (``bridge.bearer_tokens``),
and need one of them even when no API key is set. ``/v1/listen`` (a WebSocket) applies the
same keys itself, since browsers can only pass them as query parameters; the streaming
routes that imitate other APIs accept the schemes those APIs document (``Token <key>`` for the
Deepgram shape), through :func:`authorization_token`.
"""

import hmac
from collections.abc import Mapping, Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_response
from api.metrics import ApiMetrics
from protocol.errors import ErrorCode


def matches(token: str, accepted: Sequence[str]) -> bool:
    """Constant-time membership (every candidate compared)."""
    found = False
    for known in accepted:
        found |= hmac.compare_digest(token.encode(), known.encode())
    return found


def authorization_token(header: str, schemes: Sequence[str] = ("bearer",)) -> str:
    """The credential of an ``Authorization`` header value whose scheme is one of ``schemes``
    (case-insensitive), else ``""``."""
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() in schemes else ""


def bearer_token(scope: Scope) -> str:
    header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), "")
    scheme, _, token = header.strip().partition(" ")
    if scheme and not token:  # the bare key, as the recording platform's clients send it
        return scheme
    return authorization_token(header)


class AccessPolicy:
    def __init__(
        self,
        api_keys: Sequence[str],
        public_paths: Sequence[str] = (),
        scoped: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.api_keys = list(api_keys)
        self.public_paths = list(public_paths)
        self.scoped = {prefix: list(tokens) for prefix, tokens in (scoped or {}).items()}

    def is_public(self, path: str) -> bool:
        return any(
            path.startswith(entry[:-1]) if entry.endswith("*") else path == entry
            for entry in self.public_paths
        )

    def accepted(self, path: str) -> list[str]:
        """The credentials ``path`` accepts; empty = open."""
        if self.is_public(path):
            return []
        extra = [
            t for prefix, tokens in self.scoped.items() if path.startswith(prefix) for t in tokens
        ]
        return [*self.api_keys, *extra]

    def allows(self, path: str, token: str) -> bool:
        accepted = self.accepted(path)
        return not accepted or (bool(token) and matches(token, accepted))


class AuthMiddleware:
    def __init__(self, app: ASGIApp, policy: AccessPolicy, metrics: ApiMetrics) -> None:
        self.app = app
        self.policy = policy
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.policy.allows(scope["path"], bearer_token(scope)):
            await self.app(scope, receive, send)
            return
        self.metrics.auth_failures.labels("http").inc()
        response = error_response(
            401,
            ErrorCode.UNAUTHORIZED,
            "missing or unknown API key",
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)
