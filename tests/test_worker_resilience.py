"""One job's trouble never stops the worker; a duplicate run never breaks a finished record."""

import asyncio
import json
from functools import partial
from pathlib import Path

import nats

from pipeline.jobs import JobKind, JobOptions, JobRecord, JobSource, JobState, JobStore, wait_for
from pipeline.worker import Worker, _finished
from tests.api_helpers import make_settings, running_api


async def test_a_finished_record_survives_a_second_run(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        store = await JobStore.open(nc, "rs-dup")
        record = JobRecord.queued(JobKind.BATCH, JobSource(type="upload"), JobOptions())
        await store.create(record)
        await store.transition(record.id, JobState.PROCESSING)
        first = {"progress": 100, "message": "completed", "results": ["transcript.json"]}
        done = await store.modify(record.id, partial(_finished, JobState.COMPLETED, first))
        second = {"progress": 100, "message": "completed", "results": ["other"]}
        again = await store.modify(record.id, partial(_finished, JobState.COMPLETED, second))
        failed = {"message": "failed", "error": {"code": "INTERNAL", "message": "late"}}
        late = await store.modify(record.id, partial(_finished, JobState.FAILED, failed))
        assert done.status == again.status == late.status == JobState.COMPLETED
        assert (await store.get(record.id)).results == ["transcript.json"]
    finally:
        await nc.close()


async def test_a_broken_record_does_not_stop_the_loop_and_a_dead_loop_fails_health(
    nats_url: str, tmp_path: Path
) -> None:
    settings = make_settings(nats_url, tmp_path)
    async with running_api(settings) as (client, services):
        store = services.store
        # a record that does not parse: reading it raises inside the loop
        await store._kv.create("tr_broken", b'{"id": "tr_broken", "kind": "nonsense"}')
        await store.js.publish(
            store.work_subject(JobKind.BATCH),
            json.dumps({"id": "tr_broken"}).encode(),
            headers={"Nats-Msg-Id": "tr_broken"},
        )
        record = JobRecord.queued(JobKind.BATCH, JobSource(type="upload"), JobOptions())
        await store.submit(record, b"not audio at all")
        failed = await wait_for(store, record.id, limit_s=30)
        assert failed.status == JobState.FAILED and failed.error is not None
        (worker,) = [r for r in services._running if isinstance(r, Worker)]
        assert worker.alive
        assert (await client.get("/health")).status_code == 200

        assert worker._task is not None
        worker._task.cancel()
        await asyncio.sleep(0.05)
        response = await client.get("/health")
        assert response.status_code == 503
        assert response.json()["problems"] == ["the job worker loop has stopped"]
