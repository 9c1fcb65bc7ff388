"""Every API error is JSON ``{"error": {"code", "message"}}`` with a precise status: each
:class:`~protocol.errors.ServiceError` raised under a route (the API's, the bridge's) is
answered here."""

import re
from collections.abc import Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast

import fastapi.routing
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from protocol.errors import ERROR_SCHEMA, ErrorCode, ServiceError, error_body

__all__ = ["ApiError", "error_body", "error_response", "install_error_handlers"]

if TYPE_CHECKING:
    from api.auth import AccessPolicy


class ApiError(ServiceError):
    """A :class:`ServiceError` raised by the API's own routes."""


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def route_contexts(app: FastAPI) -> Iterable[Any]:
    """Every route of ``app``, included routers' too (FastAPI >= 0.165 no longer lists
    included routes in ``app.routes``; its contexts carry ``path`` and ``original_route``)."""
    walk = getattr(fastapi.routing, "iter_route_contexts", lambda routes: routes)
    return cast(Iterable[Any], walk(app.routes))


def allowed_methods(app: FastAPI, path: str) -> set[str]:
    """The methods of the route that owns ``path`` (Starlette names the first match's)."""
    contexts = route_contexts(app)
    matching: dict[str, set[str]] = {}
    for route in contexts:
        template, found = getattr(route, "path", None), getattr(route, "methods", None)
        if template and found and compile_path(template)[0].match(path):
            matching.setdefault(template, set()).update(found)
    if not matching:
        return set()
    # /v1/janus/join also fits /v1/janus/{session_id}: the most literal template owns the path
    best = max(len(re.sub(r"\{[^}]*\}", "", template)) for template in matching)
    return {
        method
        for template, methods in matching.items()
        if len(re.sub(r"\{[^}]*\}", "", template)) == best
        for method in methods
    }


_STATUS_CODES = {
    401: ErrorCode.UNAUTHORIZED,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.INVALID_REQUEST,
    413: ErrorCode.TOO_LARGE,
}


def install_error_handlers(app: FastAPI) -> None:
    async def service_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _STATUS_CODES.get(exc.status_code, ErrorCode.INVALID_REQUEST)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(sorted(allowed_methods(app, request.url.path)))
        return error_response(exc.status_code, code, str(exc.detail), headers)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        malformed = any(error.get("type") == "json_invalid" for error in errors)
        message = "; ".join(
            f"{'.'.join(str(p) for p in error.get('loc', ()))}: {error.get('msg')}"
            for error in errors
        )
        return error_response(
            400 if malformed else 422, ErrorCode.INVALID_REQUEST, message or "invalid request"
        )

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


def _documented(status: int) -> dict[str, Any]:
    return {
        "description": HTTPStatus(status).phrase,
        "content": {"application/json": {"schema": ERROR_SCHEMA}},
    }


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route answers."""
    return {status: _documented(status) for status in statuses}


def document_errors(schema: dict[str, Any], policy: "AccessPolicy") -> dict[str, Any]:
    """Add what every route may answer as configured: 401 and the bearer scheme where a
    credential is needed, 408/413 where a body is read, 500; FastAPI's 422 gets the error
    body it really has."""
    schema.setdefault("components", {}).setdefault("securitySchemes", {})["apiKey"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key (api.api_keys); bridge routes also take bridge.bearer_tokens",
    }
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            added = [500]
            if policy.accepted(path):
                added.append(401)
                operation["security"] = [{"apiKey": []}]
            if method in ("post", "put", "patch"):
                added += [408, 413]
            for status in added:
                responses.setdefault(str(status), _documented(status))
            if "422" in responses:
                responses["422"] = _documented(422)
    schema["components"].get("schemas", {}).pop("HTTPValidationError", None)
    schema["components"].get("schemas", {}).pop("ValidationError", None)
    return schema
