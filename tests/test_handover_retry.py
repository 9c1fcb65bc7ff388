"""A call that ends while NATS is away is handed over once NATS is back, without a restart;
a call still open in the process is never taken for an interrupted one."""

import asyncio
from pathlib import Path

import numpy as np

from engines.scheduler import DecodeScheduler
from pipeline.call import CallSession
from pipeline.jobs import JobState, wait_for
from pipeline.recorder import CallRecord
from pipeline.runtime import LiveRuntime
from pipeline.sink import CollectingSink
from tests.api_helpers import make_settings, running_api
from tests.conftest import NatsProcess
from tests.live_helpers import live_engine


async def test_a_failed_handover_is_retried(nats_process: NatsProcess, tmp_path: Path) -> None:
    settings = make_settings(nats_process.url, tmp_path, postcall={"handover_retry_s": 1.0})
    scheduler = DecodeScheduler(1)
    await scheduler.start()
    runtime = LiveRuntime(settings, live_engine(), scheduler, CollectingSink())
    try:
        async with running_api(settings, runtime=runtime) as (_, services):
            still_open = CallSession(runtime, "open")
            await still_open.start()
            call = CallSession(runtime, "cut")
            await call.start()
            call.add_participant("ann").push(np.zeros(16_000, np.int16))
            await asyncio.sleep(1.5)  # a retry pass runs while both calls are open
            nats_process.stop()
            record = await call.end()
            assert not record.handed_over
            nats_process.start()
            async with asyncio.timeout(60):
                while not CallRecord.load(record.directory).handed_over:  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
            job = await wait_for(services.store, call.job_id, limit_s=60)
            assert (job.status, job.source.call_id) == (JobState.COMPLETED, call.call_id)
            assert await services.store.has_call(call.call_id)
            await asyncio.sleep(1.5)  # more retry passes: the open call stays open
            assert CallRecord.load(runtime.calls_dir / still_open.call_id).state == "live"
            await still_open.end()
    finally:
        await scheduler.stop()
