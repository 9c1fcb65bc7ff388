"""Durable jobs: records with an explicit state machine, kept in NATS JetStream.

* work queue: stream ``<BASE>_JOBS`` (work-queue retention) on ``<prefix>.v1.jobs.<kind>``;
  the message body is ``{"id": <job id>}`` and ``Nats-Msg-Id`` is the job id, so a repeated
  submission is dropped by the server;
* records: KV bucket ``<base>_jobs``, key = job id, updated with compare-and-set;
* audio and results: object store ``<base>_files``, names ``<job id>/<file>``, so writing a
  result twice (a redelivered job) overwrites rather than duplicates;
* call recordings: the same object store, names ``calls/<call id>/<file>`` (``call.json``,
  ``finals.jsonl`` and one WAV per participant), put there when the call is handed over, so
  a worker on any machine can run its post-call job.

``<base>`` is the subject prefix with dots turned into underscores (``roomscribe``).
"""

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import nats.js.errors
import numpy as np
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from config.settings import Settings
from engines.whisper_batch import WhisperModels
from pipeline.js_read import copy_object, kv_keys, object_names, read_object
from protocol.jobs import (
    IllegalTransitionError,
    JobError,
    JobKind,
    JobOptions,
    JobRecord,
    JobSource,
    JobState,
    new_job_id,
)
from protocol.subjects import Subjects
from protocol.transcript import Transcript

__all__ = [
    "IllegalTransitionError",
    "JobContext",
    "JobError",
    "JobFailure",
    "JobKind",
    "JobNotFoundError",
    "JobOptions",
    "JobRecord",
    "JobSource",
    "JobState",
    "JobStore",
    "bucket_base",
    "new_job_id",
    "wait_for",
]

if TYPE_CHECKING:
    from engines.diarization import Turn


class JobNotFoundError(Exception):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r}")
        self.job_id = job_id


class JobFailure(Exception):
    """Raised by a job handler: the job ends ``failed`` with this code and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def bucket_base(prefix: str) -> str:
    return prefix.replace(".", "_").replace("-", "_")


class JobStore:
    """Job records, the work queue and stored files on one JetStream context."""

    def __init__(self, nc: NatsClient, prefix: str, kv: Any, files: Any) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.prefix = prefix
        self.stream = f"{bucket_base(prefix).upper()}_JOBS"
        self._kv = kv
        self._kv_bucket = f"{bucket_base(prefix)}_jobs"
        self._files = files
        self._files_bucket = f"{bucket_base(prefix)}_files"

    @classmethod
    async def open(cls, nc: NatsClient, prefix: str = "roomscribe") -> "JobStore":
        """Create (or reuse) the stream, KV bucket and object store."""
        js = nc.jetstream()
        base = bucket_base(prefix)
        stream = f"{base.upper()}_JOBS"
        config = StreamConfig(
            name=stream,
            subjects=[Subjects(prefix).jobs],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=600.0,
        )
        try:
            await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(config)
        kv = await open_kv(js, f"{base}_jobs")
        try:
            files = await js.object_store(f"{base}_files")
        except nats.js.errors.BucketNotFoundError:
            files = await js.create_object_store(f"{base}_files", storage=StorageType.FILE)
        return cls(nc, prefix, kv, files)

    @property
    def work_subjects(self) -> str:
        return Subjects(self.prefix).jobs

    def work_subject(self, kind: JobKind) -> str:
        return Subjects(self.prefix).job(kind.value)

    async def submit(self, record: JobRecord, audio: bytes | BinaryIO | None = None) -> JobRecord:
        """Store the audio and the record, then queue the job (in that order); idempotent."""
        if audio is not None:
            await self.put_file(record.id, "audio", audio)
        with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):  # submitted before
            await self._kv.create(record.id, record.model_dump_json().encode())
        await self.js.publish(
            self.work_subject(record.kind),
            json.dumps({"id": record.id}).encode(),
            stream=self.stream,
            headers={"Nats-Msg-Id": record.id},
        )
        return record

    async def create(self, record: JobRecord) -> None:
        """Store a record without queueing it: a job whose results are already stored."""
        await self._kv.create(record.id, record.model_dump_json().encode())

    async def get(self, job_id: str) -> JobRecord:
        entry = await self._entry(job_id)
        return JobRecord.model_validate_json(entry.value)

    async def _entry(self, job_id: str) -> Any:
        try:
            entry = await self._kv.get(job_id)
        except (nats.js.errors.NotFoundError, nats.js.errors.InvalidKeyError) as exc:
            raise JobNotFoundError(job_id) from exc
        if not entry.value:
            raise JobNotFoundError(job_id)
        return entry

    async def transition(self, job_id: str, target: JobState, **changes: Any) -> JobRecord:
        """Compare-and-set the record into ``target``; raises IllegalTransitionError."""
        return await self.modify(job_id, lambda record: record.transition(target, **changes))

    async def modify(self, job_id: str, change: Callable[[JobRecord], JobRecord]) -> JobRecord:
        while True:
            entry = await self._entry(job_id)
            current = JobRecord.model_validate_json(entry.value)
            updated = change(current)
            if updated is current:
                return current
            try:
                await self._kv.update(
                    job_id, updated.model_dump_json().encode(), last=entry.revision
                )
                return updated
            except nats.js.errors.KeyWrongLastSequenceError:
                continue

    async def page(
        self, limit: int = 20, cursor: str | None = None
    ) -> tuple[list[JobRecord], str | None]:
        """Newest first; pass the returned cursor to get the next page (None: no more)."""
        ordered = sorted(await kv_keys(self.js, self._kv_bucket), reverse=True)
        if cursor is not None:
            ordered = [key for key in ordered if key < cursor]
        page: list[JobRecord] = []
        for key in ordered:
            try:
                page.append(await self.get(key))
            except JobNotFoundError:
                continue
            if len(page) == limit:
                break
        more = bool(page) and any(key < page[-1].id for key in ordered)
        return page, page[-1].id if more else None

    async def all(self) -> list[JobRecord]:
        """Every record (for sweeps; the API pages with :meth:`page`)."""
        records = []
        for key in await kv_keys(self.js, self._kv_bucket):
            with contextlib.suppress(JobNotFoundError):
                records.append(await self.get(key))
        return records

    async def delete(self, job_id: str) -> None:
        """Remove the record, its audio and every result."""
        await self._entry(job_id)
        await self.delete_files(job_id)
        await self._kv.purge(job_id)

    async def delete_files(self, job_id: str) -> None:
        for name in await self.file_names(job_id):
            await self.delete_file(job_id, name)

    async def put_file(self, job_id: str, name: str, data: bytes | BinaryIO) -> None:
        await self._files.put(f"{job_id}/{name}", data)

    async def put_call_file(self, call_id: str, name: str, path: Path) -> None:
        with open(path, "rb") as data:  # noqa: ASYNC230 - the store reads it in a thread
            await self._files.put(f"calls/{call_id}/{name}", data)

    async def put_call_bytes(self, call_id: str, name: str, data: bytes) -> None:
        await self._files.put(f"calls/{call_id}/{name}", data)

    async def get_call_bytes(self, call_id: str, name: str) -> bytes:
        """One stored file of the call; raises JobNotFoundError."""
        return await self.get_file(f"calls/{call_id}", name)

    async def delete_call_file(self, call_id: str, name: str) -> None:
        await self.delete_file(f"calls/{call_id}", name)

    async def download_call_file(self, call_id: str, name: str, path: Path) -> None:
        """Write one recorded file of the call to ``path``; raises JobNotFoundError."""
        try:
            info = await self._files.get_info(f"calls/{call_id}/{name}")
        except nats.js.errors.NotFoundError as exc:
            raise JobNotFoundError(f"calls/{call_id}/{name}") from exc
        with open(path, "wb") as out:  # noqa: ASYNC230 - chunks arrive one direct get at a time
            await copy_object(self.js, self._files_bucket, info, out)

    async def has_call(self, call_id: str) -> bool:
        try:
            info = await self._files.get_info(f"calls/{call_id}/call.json")
        except nats.js.errors.NotFoundError:
            return False
        return not info.deleted

    async def get_file(self, job_id: str, name: str) -> bytes:
        try:
            info = await self._files.get_info(f"{job_id}/{name}")
            return await read_object(self.js, self._files_bucket, info)
        except nats.js.errors.NotFoundError as exc:
            raise JobNotFoundError(f"{job_id}/{name}") from exc

    async def delete_file(self, job_id: str, name: str) -> None:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self._files.delete(f"{job_id}/{name}")

    async def file_names(self, job_id: str) -> list[str]:
        head = f"{job_id}/"
        found = []
        for name in await object_names(self.js, self._files_bucket):
            if name.startswith(head):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await self._files.get_info(name)
                    found.append(name[len(head) :])
        return found

    async def put_transcript(self, job_id: str, transcript: Transcript) -> None:
        await self.put_file(job_id, "transcript.json", transcript.model_dump_json().encode())

    async def get_transcript(self, job_id: str) -> Transcript:
        return Transcript.model_validate_json(await self.get_file(job_id, "transcript.json"))


async def open_kv(js: JetStreamContext, bucket: str, history: int = 1) -> Any:
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        return await js.create_key_value(bucket=bucket, history=history, storage=StorageType.FILE)


ProgressCallback = Callable[[float, str], None]


@dataclass
class JobContext:
    """What a job handler gets. ``progress(fraction, message)`` may be called from any thread."""

    record: JobRecord
    settings: Settings
    store: JobStore
    models: WhisperModels
    progress: ProgressCallback
    diarizer: Callable[[], "SpeakerDiarizer"]


class SpeakerDiarizer(Protocol):
    """``engines.diarization.Diarizer`` or, in the worker, ``DiarizationProcess``."""

    def diarize(
        self, samples: np.ndarray | bytes, speakers_expected: int | None = None
    ) -> list["Turn"]: ...


JobHandler = Callable[[JobContext], Awaitable[Transcript]]


async def wait_for(
    store: JobStore, job_id: str, limit_s: float = 60.0, poll_s: float = 0.1
) -> JobRecord:
    """Poll until the job is completed or failed; raises TimeoutError naming its last state.
    The deadline is also checked between polls: a cancellation swallowed inside the NATS
    client must not turn the limit into an endless poll."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    status = "not found yet"
    try:
        async with asyncio.timeout_at(deadline):
            while loop.time() < deadline:
                record = await store.get(job_id)
                if record.status.terminal:
                    return record
                status = record.status.value
                await asyncio.sleep(poll_s)
    except TimeoutError:
        if loop.time() < deadline:
            raise
    raise TimeoutError(f"job {job_id} still {status} after {limit_s:g} s")
