"""HTTP helpers shared by the bridge's routers: error bodies, bearer check, body parsing."""

import secrets
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from protocol import ErrorCode
from protocol.errors import ERROR_SCHEMA, ServiceError
from sfu_bridge.errors import BridgeError

M = TypeVar("M", bound=BaseModel)


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a bridge route answers."""
    return {
        status: {
            "description": HTTPStatus(status).phrase,
            "content": {"application/json": {"schema": ERROR_SCHEMA}},
        }
        for status in statuses
    }


def error_response(error: ServiceError) -> JSONResponse:
    """The one error body (``{"error": {"code", "message"}}``), as every route answers."""
    headers = dict(error.headers or {})
    if error.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error.body(), status_code=error.status, headers=headers or None)


def check_bearer(tokens: Sequence[str], request: Request) -> None:
    """401 unless ``tokens`` is empty or the request carries one of them."""
    if not tokens:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise BridgeError(401, ErrorCode.UNAUTHORIZED, "missing bearer token")
    if not any(secrets.compare_digest(token.strip(), known) for known in tokens):
        raise BridgeError(401, ErrorCode.UNAUTHORIZED, "unknown bearer token")


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_text(request: Request, expected_type: str) -> str:
    if media_type(request) != expected_type:
        raise BridgeError(
            415,
            ErrorCode.UNSUPPORTED_FORMAT,
            f"Content-Type must be {expected_type}, got {media_type(request) or 'none'}",
        )
    try:
        return (await request.body()).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BridgeError(400, ErrorCode.INVALID_REQUEST, "body is not UTF-8 text") from exc


def parse_json(model: type[M], data: bytes | str) -> M:
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors()
        )
        raise BridgeError(400, ErrorCode.INVALID_REQUEST, problems) from exc


async def read_json(request: Request, model: type[M]) -> M:
    if media_type(request) not in ("application/json", ""):
        raise BridgeError(
            415, ErrorCode.UNSUPPORTED_FORMAT, "Content-Type must be application/json"
        )
    return parse_json(model, await request.body())
