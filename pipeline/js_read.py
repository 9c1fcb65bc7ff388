"""Reading JetStream state without creating consumers.

nats-py's ``KeyValue.keys()`` and ``ObjectStore.list()/get()`` each create an ordered push
consumer that outlives the call (the server drops it only after its inactivity threshold),
so a listing endpoint called in a loop runs into the server's consumer limit. These helpers
use stream info (subject listing) and direct message gets instead: nothing is created.
Subject listing returns at most the server's page (100,000 subjects).
"""

import base64
import hashlib
import io
from typing import Any, BinaryIO

import nats.js.errors
from nats.js import JetStreamContext


async def _subjects(js: JetStreamContext, stream: str, subjects_filter: str) -> list[str]:
    try:
        info = await js.stream_info(stream, subjects_filter=subjects_filter)
    except nats.js.errors.NotFoundError:
        return []
    return list(info.state.subjects or {})


async def kv_keys(js: JetStreamContext, bucket: str, prefix: str = "") -> list[str]:
    """Keys of a KV bucket that start with ``prefix`` (a whole token, e.g. ``"<job id>."``),
    deleted ones included (a get says which are gone)."""
    head = f"$KV.{bucket}."
    keys = await _subjects(js, f"KV_{bucket}", f"{head}{prefix}>" if prefix else f"{head}>")
    return sorted(subject[len(head) :] for subject in keys)


async def object_names(js: JetStreamContext, bucket: str) -> list[str]:
    """Names of an object store's objects, deleted ones included (their info says so)."""
    head = f"$O.{bucket}.M."
    names = []
    for subject in await _subjects(js, f"OBJ_{bucket}", f"{head}>"):
        encoded = subject[len(head) :]
        names.append(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode())
    return names


async def read_object(js: JetStreamContext, bucket: str, info: Any) -> bytes:
    """The bytes of an object (``info`` from ``ObjectStore.get_info``), chunk by chunk with
    direct gets; raises ``nats.js.errors.Error`` when a chunk is missing or the digest differs."""
    data = io.BytesIO()
    await copy_object(js, bucket, info, data)
    return data.getvalue()


async def copy_object(js: JetStreamContext, bucket: str, info: Any, out: BinaryIO) -> None:
    """Write an object into ``out`` chunk by chunk (direct gets, no consumer); raises
    ``nats.js.errors.Error`` when a chunk is missing or the size or digest differs."""
    if not info.size:
        return
    subject = f"$O.{bucket}.C.{info.nuid}"
    stream = f"OBJ_{bucket}"
    sha = hashlib.sha256()
    size = 0
    seq = 1
    for _ in range(info.chunks or 0):
        msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
        chunk = msg.data or b""
        sha.update(chunk)
        size += len(chunk)
        out.write(chunk)
        seq = (msg.seq or seq) + 1
    digest = base64.urlsafe_b64decode(info.digest.split("=", 1)[1] + "==")
    if size != info.size or sha.digest() != digest:
        raise nats.js.errors.DigestMismatchError
