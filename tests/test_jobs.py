"""Job records, the state machine and the JetStream store, against a real nats-server."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NatsClient

from pipeline.jobs import (
    IllegalTransitionError,
    JobKind,
    JobNotFoundError,
    JobRecord,
    JobSource,
    JobState,
    JobStore,
    new_job_id,
    wait_for,
)


def _record(job_id: str | None = None) -> JobRecord:
    now = time.time()
    return JobRecord(
        id=job_id or new_job_id(now),
        kind=JobKind.BATCH,
        created_at=now,
        updated_at=now,
        source=JobSource(type="upload", filename="a.wav"),
    )


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ([], JobState.COMPLETED),
        ([JobState.PROCESSING, JobState.COMPLETED], JobState.PROCESSING),
        ([JobState.PROCESSING, JobState.COMPLETED], JobState.FAILED),
        ([JobState.FAILED], JobState.PROCESSING),
        ([JobState.FAILED], JobState.QUEUED),
        ([JobState.PROCESSING, JobState.COMPLETED], JobState.QUEUED),
    ],
)
def test_illegal_transitions_raise(path: list[JobState], target: JobState) -> None:
    record = _record()
    for state in path:
        record = record.transition(state)
    with pytest.raises(IllegalTransitionError) as caught:
        record.transition(target)
    assert caught.value.current == record.status
    assert caught.value.target == target


def test_legal_path_and_redelivery_restart() -> None:
    record = _record().transition(JobState.PROCESSING, progress=10, message="transcribing")
    record = record.transition(JobState.PROCESSING, progress=0, attempts=2)
    retrying = record.transition(JobState.QUEUED, message="retrying")
    record = retrying.transition(JobState.PROCESSING, attempts=3)
    done = record.transition(JobState.COMPLETED, progress=100)
    assert (done.status, done.progress, done.attempts) == (JobState.COMPLETED, 100, 3)
    assert done.status.terminal


def test_ids_sort_by_creation_time() -> None:
    ids = [new_job_id(1_700_000_000 + i) for i in range(5)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 5


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


async def test_store_submit_queue_and_compare_and_set(nc: NatsClient) -> None:
    store = await JobStore.open(nc, "rs-test")
    record = await store.submit(_record(), b"RIFF-not-really")
    again = await JobStore.open(nc, "rs-test")  # reopening reuses the stream and buckets
    assert (await again.get(record.id)).status == JobState.QUEUED
    assert await again.get_file(record.id, "audio") == b"RIFF-not-really"

    info = await nc.jetstream().stream_info(store.stream)
    assert info.config.subjects == ["rs-test.v1.jobs.>"]
    assert info.state.messages == 1
    await store.submit(record)  # the same job again: the server drops the duplicate message
    assert (await nc.jetstream().stream_info(store.stream)).state.messages == 1

    processing = await store.transition(record.id, JobState.PROCESSING, progress=5)
    assert processing.progress == 5
    await store.transition(record.id, JobState.FAILED, error={"code": "X", "message": "y"})
    with pytest.raises(IllegalTransitionError):
        await store.transition(record.id, JobState.COMPLETED)
    assert (await store.get(record.id)).error is not None


async def test_store_pages_newest_first_and_delete_removes_files(nc: NatsClient) -> None:
    store = await JobStore.open(nc, "rs-page")
    assert await store.page(10) == ([], None)
    base = time.time()
    ids = []
    for i in range(5):
        record = _record(new_job_id(base + i))
        await store.submit(record, b"x" * (i + 1))
        ids.append(record.id)
    first, cursor = await store.page(2)
    second, cursor2 = await store.page(2, cursor)
    third, cursor3 = await store.page(2, cursor2)
    assert [r.id for r in first + second + third] == ids[::-1]
    assert cursor3 is None

    await store.put_file(ids[0], "transcript.json", b"{}")
    await store.put_file(ids[0], "transcript.json", b"{}")  # overwrite, not a second copy
    assert sorted(await store.file_names(ids[0])) == ["audio", "transcript.json"]
    await store.delete(ids[0])
    with pytest.raises(JobNotFoundError):
        await store.get(ids[0])
    with pytest.raises(JobNotFoundError):
        await store.get_file(ids[0], "audio")
    assert await store.file_names(ids[0]) == []
    assert await store.get_file(ids[1], "audio") == b"xx"
    with pytest.raises(JobNotFoundError):
        await store.get("no such id")


async def test_waiting_for_a_job_ends_at_its_limit_even_past_a_swallowed_cancellation(
    nc: NatsClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await JobStore.open(nc, "rs-test")
    record = await store.submit(_record())
    real_get = store.get

    async def deaf_get(job_id: str) -> JobRecord:
        found = await real_get(job_id)
        with contextlib.suppress(asyncio.CancelledError):  # as a client library's flush may
            await asyncio.sleep(0.05)
        return found

    monkeypatch.setattr(store, "get", deaf_get)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=f"job {record.id} still queued after 0.5 s"):
        await wait_for(store, record.id, limit_s=0.5, poll_s=0)
    assert time.monotonic() - started < 2
