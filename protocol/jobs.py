"""Job records: the state machine, kinds, options and sources of a transcript job, as stored
in the KV bucket ``<base>_jobs`` and answered by ``GET /v1/transcripts/{id}``. Pure."""

import os
import time
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class JobState(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED)


_ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.PROCESSING, JobState.FAILED}),
    # processing -> processing: progress updates and a redelivered job restarting;
    # processing -> queued: its worker died, the job waits for redelivery ("retrying")
    JobState.PROCESSING: frozenset(
        {JobState.PROCESSING, JobState.QUEUED, JobState.COMPLETED, JobState.FAILED}
    ),
    JobState.COMPLETED: frozenset(),
    JobState.FAILED: frozenset(),
}


class JobKind(StrEnum):
    BATCH = "batch"
    POSTCALL = "postcall"
    RETRANSCRIBE = "retranscribe"
    # a summary of a caller's transcript (``POST /api/summary/``): stored, never queued
    SUMMARY = "summary"


class IllegalTransitionError(Exception):
    def __init__(self, job_id: str, current: JobState, target: JobState) -> None:
        super().__init__(f"job {job_id}: illegal transition {current} -> {target}")
        self.job_id = job_id
        self.current = current
        self.target = target


class JobError(BaseModel):
    code: str
    message: str


class JobOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    language: str | None = None
    model: str | None = None
    diarize: bool = False
    speakers_expected: int | None = Field(default=None, ge=1, le=32)
    redact_pii: bool | list[str] = False
    summarize: bool = False
    beam_size: int | None = Field(default=None, ge=1, le=16)
    allow_truncated: bool = False


class JobSource(BaseModel):
    type: Literal["upload", "url", "call", "segment"]
    url: str | None = None
    filename: str | None = None
    size: int | None = None
    call_id: str | None = None
    parent_id: str | None = None
    segment_id: str | None = None


class JobRecord(BaseModel):
    id: str
    kind: JobKind
    status: JobState = JobState.QUEUED
    progress: int = Field(default=0, ge=0, le=100)
    message: str = "queued"
    created_at: float
    updated_at: float
    source: JobSource
    options: JobOptions = Field(default_factory=JobOptions)
    webhook_url: str | None = None
    error: JobError | None = None
    attempts: int = 0
    results: list[str] = Field(default_factory=list, description="stored result files")

    @classmethod
    def queued(
        cls,
        kind: JobKind,
        source: JobSource,
        options: JobOptions,
        webhook_url: str | None = None,
    ) -> "JobRecord":
        """A new job, stamped now, with an id that sorts by creation time."""
        now = time.time()
        return cls(
            id=new_job_id(now),
            kind=kind,
            created_at=now,
            updated_at=now,
            source=source,
            options=options,
            webhook_url=webhook_url,
        )

    def transition(self, target: JobState, **changes: Any) -> "JobRecord":
        """A copy in state ``target``; raises IllegalTransitionError if the machine forbids it."""
        if target not in _ALLOWED[self.status]:
            raise IllegalTransitionError(self.id, self.status, target)
        return JobRecord.model_validate(
            {**self.model_dump(), **changes, "status": target, "updated_at": time.time()}
        )


def new_job_id(now: float | None = None) -> str:
    """Ids sort by creation time: ``tr_`` + 12 hex digits of milliseconds + 8 random."""
    millis = int((time.time() if now is None else now) * 1000)
    return f"tr_{millis:012x}{os.urandom(4).hex()}"
