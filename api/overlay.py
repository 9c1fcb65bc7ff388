"""The caption overlay: ``GET /overlay?room=<room>`` (an OBS browser source, for instance).

The page subscribes to ``<prefix>.v1.captions.<room>.>`` straight through the NATS WebSocket
listener; the API serves the page, its built script (``web/static/overlay.js``, built from
``web/src`` with ``npm run build`` and kept in the repository) and, with the embedded NATS
server, read-only credentials for one room: ``POST /v1/rooms/{room}/overlay-token`` answers
an ``overlay_url`` that carries them (see :mod:`api.overlay_credentials`). With your own
NATS server (``nats.url``) the overlay connects as that server allows, e.g. anonymously, or
with ``user``/``pass`` query parameters of the page. Style options are query parameters of
the page too (see ``web/src/overlay.js``).
"""

import json
from importlib.resources import files
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse

from api.errors import ApiError, errors
from api.overlay_credentials import OverlayCapacityError, OverlayCredentials
from config.settings import Settings
from protocol.errors import ErrorCode
from protocol.subjects import InvalidIdError

_WEB = files("web")


def page_html(prefix: str, nats_websocket_url: str | None) -> str:
    config = json.dumps({"natsUrl": nats_websocket_url, "prefix": prefix})
    # a JSON string inside <script> must not be able to close the element
    safe = config.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return _WEB.joinpath("overlay.html").read_text("utf-8").replace("{{CONFIG}}", safe)


def overlay_router(
    settings: Settings,
    nats_websocket_url: str | None,
    credentials: OverlayCredentials | None = None,
) -> APIRouter:
    """``nats_websocket_url`` is what browsers connect to (e.g. the embedded server's
    ``websocket_url``; None makes the page require a ``nats`` query parameter);
    ``credentials`` issues room-scoped NATS users (None: no overlay tokens)."""
    router = APIRouter(tags=["overlay"])
    html = page_html(settings.nats.subject_prefix, nats_websocket_url)

    @router.get("/overlay", response_class=HTMLResponse)
    async def overlay_page() -> HTMLResponse:
        """Query: ``room`` (required), ``user`` and ``pass`` (from an overlay token),
        ``nats``, ``font``, ``lines``, ``position`` (top or bottom), ``bg``
        (``transparent`` or a CSS color), ``color``, ``fade`` (seconds)."""
        return HTMLResponse(html, headers={"Cache-Control": "no-cache"})

    @router.get("/overlay/overlay.js", include_in_schema=False, responses=errors(404))
    async def overlay_script() -> Response:
        script = _WEB.joinpath("static", "overlay.js")
        if not script.is_file():
            raise ApiError(
                404,
                ErrorCode.NOT_FOUND,
                "web/static/overlay.js is missing: run npm run build in web/",
            )
        return Response(
            script.read_bytes(),
            media_type="text/javascript; charset=utf-8",
            headers={"Cache-Control": "no-cache"},
        )

    @router.post("/v1/rooms/{room:path}/overlay-token", responses=errors(400, 404, 429, 503))
    async def overlay_token(room: str) -> dict[str, Any]:
        """Read-only NATS credentials for one room's captions, and the overlay URL with them."""
        if credentials is None:
            raise ApiError(
                404,
                ErrorCode.NOT_FOUND,
                "overlay tokens need the embedded NATS server with overlay.auth on",
            )
        if not credentials.ready:
            raise ApiError(503, ErrorCode.NOT_READY, "the embedded NATS server is not running")
        try:
            issued = await credentials.issue(room)
        except InvalidIdError as exc:
            raise ApiError(400, ErrorCode.INVALID_REQUEST, str(exc)) from exc
        except OverlayCapacityError as exc:
            raise ApiError(429, ErrorCode.CAPACITY, str(exc)) from exc
        query = urlencode({"room": room, "user": issued.user, "pass": issued.password})
        return {
            "room": room,
            "user": issued.user,
            "password": issued.password,
            "expires_at": issued.expires_at,
            "subject": credentials.subjects.room_captions(room),
            "nats_url": nats_websocket_url,
            "overlay_url": f"/overlay?{query}",
        }

    return router
