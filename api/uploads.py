"""Multipart uploads parsed while they stream in, with the size cap enforced on the way."""

from collections.abc import AsyncGenerator

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from api.errors import ApiError
from protocol.errors import ErrorCode

MAX_FIELD_BYTES = 64 * 1024


class Upload:
    def __init__(
        self,
        fields: dict[str, str],
        file: UploadFile | None,
        size: int,
        repeated: dict[str, list[str]] | None = None,
    ) -> None:
        self.fields = fields  # the last value of each field
        self.file = file
        self.size = size
        self.repeated = repeated or {}  # every value of each field, in order


def _too_large(limit: int) -> ApiError:
    return ApiError(413, ErrorCode.TOO_LARGE, f"upload is larger than the {limit} byte limit")


async def read_upload(request: Request, limit: int, file_field: str = "file") -> Upload:
    """Parse a multipart body; stops reading and raises 413 TOO_LARGE past ``limit`` bytes.

    The file part spools to a temporary file (memory only up to 1 MB).
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + MAX_FIELD_BYTES:
        raise _too_large(limit)
    received = 0

    async def counted() -> AsyncGenerator[bytes, None]:
        nonlocal received
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit + MAX_FIELD_BYTES:
                raise _too_large(limit)
            yield chunk

    parser = MultiPartParser(
        request.headers, counted(), max_files=1, max_fields=32, max_part_size=MAX_FIELD_BYTES
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ApiError(
            400, ErrorCode.INVALID_REQUEST, f"malformed multipart body: {exc.message}"
        ) from exc
    fields: dict[str, str] = {}
    repeated: dict[str, list[str]] = {}
    file: UploadFile | None = None
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key != file_field:
                await value.close()
                raise ApiError(
                    400,
                    ErrorCode.INVALID_REQUEST,
                    f"unexpected file field {key!r} (use {file_field!r})",
                )
            file = value
        else:
            fields[key] = value
            repeated.setdefault(key, []).append(value)
    size = file.size or 0 if file is not None else 0
    if size > limit:
        assert file is not None
        await file.close()
        raise _too_large(limit)
    return Upload(fields, file, size, repeated)
