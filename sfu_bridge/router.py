"""All HTTP routes of the bridge in one router for the service app to mount."""

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from protocol.errors import ServiceError
from protocol.openapi import json_body
from sfu_bridge import room_session as rooms
from sfu_bridge.bridge import Bridge
from sfu_bridge.http import check_bearer, documented, error_response, read_json
from sfu_bridge.janus import janus_router
from sfu_bridge.whip import whip_router


async def _guarded(
    bridge: Bridge, request: Request, action: Callable[[], Awaitable[Any]]
) -> Response:
    try:
        check_bearer(bridge.credentials, request)
        result = await action()
    except ServiceError as exc:
        return error_response(exc)
    if result is None:
        return Response(status_code=204)
    return JSONResponse(result.model_dump())


def room_router(bridge: Bridge) -> APIRouter:
    router = APIRouter(prefix="/v1/sessions", tags=["room sessions"])

    @router.post(
        "",
        response_model=rooms.SessionAnswer,
        responses=documented(400, 401, 413, 415, 422, 503),
        openapi_extra={"requestBody": json_body(rooms.CreateSession)},
    )
    async def create(request: Request) -> Response:
        async def action() -> rooms.SessionAnswer:
            return await rooms.create_session(bridge, await read_json(request, rooms.CreateSession))

        return await _guarded(bridge, request, action)

    @router.post(
        "/{session_id}/offer",
        response_model=rooms.SessionAnswer,
        responses=documented(400, 401, 404, 413, 415, 422),
        openapi_extra={"requestBody": json_body(rooms.Reoffer)},
    )
    async def offer(session_id: str, request: Request) -> Response:
        async def action() -> rooms.SessionAnswer:
            rooms.room_session(bridge, session_id)
            return await rooms.reoffer(bridge, session_id, await read_json(request, rooms.Reoffer))

        return await _guarded(bridge, request, action)

    @router.put(
        "/{session_id}/tracks",
        status_code=204,
        response_model=None,
        responses=documented(400, 401, 404, 413, 415, 422),
        openapi_extra={"requestBody": json_body(rooms.TrackMapUpdate)},
    )
    async def tracks(session_id: str, request: Request) -> Response:
        async def action() -> None:
            rooms.room_session(bridge, session_id)
            await rooms.update_tracks(
                bridge, session_id, await read_json(request, rooms.TrackMapUpdate)
            )

        return await _guarded(bridge, request, action)

    @router.delete(
        "/{session_id}", status_code=204, response_model=None, responses=documented(401, 404)
    )
    async def delete(session_id: str, request: Request) -> Response:
        return await _guarded(bridge, request, lambda: rooms.delete_session(bridge, session_id))

    return router


BRIDGE_PATHS = ("/whip/", "/v1/sessions", "/v1/janus/")


def bridge_router(bridge: Bridge) -> APIRouter:
    router = APIRouter()
    router.include_router(whip_router(bridge))
    router.include_router(room_router(bridge))
    router.include_router(janus_router(bridge))
    return router
