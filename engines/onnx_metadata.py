"""Read an ONNX file's metadata_props without loading its graph.

sherpa-onnx ends the whole process when a model lacks a metadata key it needs, so models
are checked with this before they are handed to it. Only the top level of the protobuf is
walked; the graph and its weights are skipped with seeks, so a 300 MB encoder costs
microseconds.
"""

from pathlib import Path
from typing import BinaryIO

from engines.base import EngineError

_METADATA_FIELD = 14  # ModelProto.metadata_props


class OnnxFileError(EngineError):
    code = "ENGINE_FAILED"


def _varint(stream: BinaryIO, path: Path) -> int | None:
    result = shift = 0
    while True:
        byte = stream.read(1)
        if not byte:
            if shift == 0:
                return None
            raise OnnxFileError(f"{path.name} is truncated (inside a varint)")
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise OnnxFileError(f"{path.name} is not an ONNX file (bad varint)")


def _entry(data: bytes) -> tuple[str, str]:
    """StringStringEntryProto: key = 1, value = 2."""
    fields = {1: "", 2: ""}
    pos = 0
    while pos < len(data):
        tag = data[pos]
        pos += 1
        length = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if tag & 7 == 2 and tag >> 3 in fields:
            fields[tag >> 3] = data[pos : pos + length].decode("utf-8", "replace")
        pos += length
    return fields[1], fields[2]


def read_metadata(path: Path) -> dict[str, str]:
    size = path.stat().st_size
    metadata: dict[str, str] = {}
    with path.open("rb") as stream:
        while True:
            tag = _varint(stream, path)
            if tag is None:
                return metadata
            field, wire = tag >> 3, tag & 7
            if wire == 0:
                _varint(stream, path)
            elif wire == 1:
                stream.seek(8, 1)
            elif wire == 5:
                stream.seek(4, 1)
            elif wire == 2:
                length = _varint(stream, path)
                if length is None or stream.tell() + length > size:
                    raise OnnxFileError(f"{path.name} is truncated or not an ONNX file")
                if field == _METADATA_FIELD:
                    try:
                        key, value = _entry(stream.read(length))
                    except IndexError as exc:
                        raise OnnxFileError(f"{path.name} has a malformed metadata entry") from exc
                    metadata[key] = value
                else:
                    stream.seek(length, 1)
            else:
                raise OnnxFileError(f"{path.name} is not an ONNX file (wire type {wire})")
