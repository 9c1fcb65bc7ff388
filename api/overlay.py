"""The caption overlay: ``GET /overlay?room=<room>`` (an OBS browser source, for instance).

The page subscribes to ``<prefix>.v1.captions.<room>.>`` straight through the NATS WebSocket
listener; the API only serves the page and its built script (``web/static/overlay.js``,
built from ``web/src`` with ``npm run build`` and kept in the repository). The NATS
subscription is not authenticated: whoever reaches the WebSocket listener can read every
room's captions, so expose that port only where that is acceptable. Style options are query
parameters of the page (see ``web/src/overlay.js``).
"""

import json
from importlib.resources import files

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse

from api.errors import ApiError
from config.settings import Settings
from protocol.errors import ErrorCode

_WEB = files("web")


def page_html(prefix: str, nats_websocket_url: str | None) -> str:
    config = json.dumps({"natsUrl": nats_websocket_url, "prefix": prefix})
    # a JSON string inside <script> must not be able to close the element
    safe = config.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return _WEB.joinpath("overlay.html").read_text("utf-8").replace("{{CONFIG}}", safe)


def overlay_router(settings: Settings, nats_websocket_url: str | None) -> APIRouter:
    """``nats_websocket_url`` is what browsers connect to (e.g. the embedded server's
    ``websocket_url``); None makes the page require a ``nats`` query parameter."""
    router = APIRouter(tags=["overlay"])
    html = page_html(settings.nats.subject_prefix, nats_websocket_url)

    @router.get("/overlay", response_class=HTMLResponse)
    async def overlay_page() -> HTMLResponse:
        """Query: ``room`` (required), ``nats``, ``font``, ``lines``, ``position`` (top or
        bottom), ``bg`` (``transparent`` or a CSS color), ``color``, ``fade`` (seconds)."""
        return HTMLResponse(html, headers={"Cache-Control": "no-cache"})

    @router.get("/overlay/overlay.js", include_in_schema=False)
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

    return router
