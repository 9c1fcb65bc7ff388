"""The HTTP API: ``create_app(services)`` builds the FastAPI app (OpenAPI at /openapi.json)."""

import asyncio
import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api import transcripts
from api.errors import ApiError, install_error_handlers
from api.metrics import CONTENT_TYPE_LATEST
from api.middleware import RequestContextMiddleware
from api.services import Services
from protocol.errors import ErrorCode

_bearer = HTTPBearer(auto_error=False)


async def require_api_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    keys: list[str] = request.app.state.services.settings.api.api_keys
    if not keys:
        return
    given = credentials.credentials if credentials is not None else ""
    if not any(hmac.compare_digest(given.encode(), key.encode()) for key in keys):
        raise ApiError(
            401,
            ErrorCode.UNAUTHORIZED,
            "missing or unknown API key",
            headers={"WWW-Authenticate": "Bearer"},
        )


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
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware, metrics=services.metrics)
    app.include_router(
        transcripts.router, dependencies=[Depends(require_api_key)], tags=["transcripts"]
    )
    for router in services.routers:
        app.include_router(router)

    @app.get("/v1/models", dependencies=[Depends(require_api_key)], tags=["models"])
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

    @app.get("/health", tags=["ops"])
    async def health() -> Response:
        problems = services.problems()
        body = {
            "status": "degraded" if problems else "ok",
            "nats": services.nc.is_connected,
            "problems": problems,
        }
        return Response(
            content=json.dumps(body),
            media_type="application/json",
            status_code=503 if problems else 200,
        )

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
