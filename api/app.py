"""The HTTP API: ``create_app(services)`` builds the FastAPI app (OpenAPI at /openapi.json)."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Response
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIWebSocketRoute
from starlette.routing import WebSocketRoute

from api import transcripts
from api.auth import AccessPolicy, AuthMiddleware
from api.cors import CorsMiddleware, CorsPolicy
from api.errors import document_errors, install_error_handlers, route_contexts
from api.limits import BodyLimitMiddleware
from api.metrics import CONTENT_TYPE_LATEST
from api.middleware import RequestContextMiddleware
from api.services import Services


def websocket_routes(app: FastAPI) -> list[dict[str, str]]:
    """OpenAPI has no WebSocket operations: the document lists them under ``x-websockets``
    (path and the first line of the handler's docstring), so it names every route."""
    found = {}
    for context in route_contexts(app):
        route = getattr(context, "original_route", context)  # FastAPI >= 0.165 wraps them
        if isinstance(route, WebSocketRoute | APIWebSocketRoute):
            doc = (route.endpoint.__doc__ or "").strip().splitlines()
            found[context.path] = {"path": context.path, "summary": doc[0] if doc else route.name}
    return [found[path] for path in sorted(found)]


def create_app(services: Services) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await services.start()
        try:
            yield
        finally:
            await services.stop()

    app = FastAPI(
        title="roomscribe",
        version="0.1.0",
        description="Live per-speaker captions, post-call transcripts and batch transcription jobs.",
        lifespan=lifespan,
    )
    app.state.services = services
    api = services.settings.api
    public = [*api.public_paths, *services.public_paths]
    policy = AccessPolicy(api.api_keys, public, services.scoped_tokens)
    install_error_handlers(app)
    # the last added runs first: CORS, request id and metrics, then auth, then body bounds
    app.add_middleware(BodyLimitMiddleware, settings=api, metrics=services.metrics)
    app.add_middleware(AuthMiddleware, policy=policy, metrics=services.metrics)
    app.add_middleware(RequestContextMiddleware, metrics=services.metrics)
    if api.cors_origins:
        cors = CorsPolicy(api.cors_origins, services.accept_post)
        app.add_middleware(CorsMiddleware, policy=cors)
    app.include_router(transcripts.router, tags=["transcripts"])
    for router in services.routers:
        app.include_router(router)

    @app.get("/v1/models", tags=["models"])
    async def models() -> dict[str, list[dict[str, object]]]:
        from engines.models import list_models

        found = await asyncio.to_thread(list_models, services.settings.data_dir)
        return {
            "data": [
                {
                    "name": m.name,
                    "kind": m.kind,
                    "present": m.present,
                    "size_bytes": m.size_bytes,
                    "source": m.source,
                }
                for m in found
            ]
        }

    @app.get(
        "/health",
        tags=["ops"],
        responses={
            503: {"description": "NATS is not connected", "content": {"application/json": {}}}
        },
    )
    async def health() -> Response:
        problems = services.problems()
        body = {
            "status": "degraded" if problems else "ok",
            "nats": services.nc.is_connected,
            "problems": problems,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if services.bot_id is not None:
            body["bot"] = services.bot_id
        return Response(
            content=json.dumps(body),
            media_type="application/json",
            status_code=503 if problems else 200,
        )

    @app.get("/", tags=["ops"])
    async def root() -> dict[str, Any]:
        """Service metadata: name, version and every route."""
        endpoints = sorted(
            {path for route in route_contexts(app) if (path := getattr(route, "path", None))}
        )
        return {
            "name": app.title,
            "version": app.version,
            "description": app.description,
            "docs": "/docs",
            "openapi": "/openapi.json",
            "endpoints": endpoints,
        }

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schema["x-websockets"] = websocket_routes(app)
            app.openapi_schema = document_errors(schema, policy)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
