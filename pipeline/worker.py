"""The job worker: consumes the JetStream work queue, runs jobs, stores results, notifies.

Delivery is at least once; a job completes once. A worker that dies mid-job leaves its
message unacknowledged, JetStream redelivers it after ``job_ack_wait_s`` and the next worker
starts the job again (``processing`` -> ``processing``, ``attempts`` + 1). While a job runs
the worker sends in-progress acks and touches the record every few seconds, so a long job is
never redelivered early; a ``processing`` record untouched for ``STALE_S`` belonged to a
worker that died, and any worker's sweep moves it back to ``queued`` ("retrying") until the
redelivery. Results are object-store names keyed by job id (a rerun overwrites them), the
final transition keeps a record that is already final (a duplicate run) and events are
deduplicated by (job id, event), so a redelivered job that had already finished only
re-acknowledges. One job's failure never ends the loop; :attr:`Worker.alive` says it runs.

Run ``python -m pipeline.worker`` (settings from the environment, ``NATS_URL`` required).
"""

import asyncio
import collections
import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import nats
import nats.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from config.settings import Settings, load_settings
from engines.device import resolve_device
from engines.whisper_batch import WhisperModels
from pipeline.batch import run_batch
from pipeline.jobs import (
    JobContext,
    JobFailure,
    JobHandler,
    JobKind,
    JobNotFoundError,
    JobRecord,
    JobState,
    JobStore,
)
from pipeline.postcall import run_postcall
from pipeline.pull import fetch_forever
from pipeline.results import finish, store_results
from pipeline.retranscribe import run_retranscribe
from pipeline.tasks import TaskSet, cancel_and_wait
from pipeline.webhooks import Notifier, WebhookDispatcher, event_data
from protocol.errors import ErrorCode
from protocol.transcript import Transcript
from protocol.webhooks import WebhookEventType

if TYPE_CHECKING:
    from engines.diarization_process import DiarizationProcess
    from pipeline.jobs import SpeakerDiarizer

log = logging.getLogger("roomscribe.worker")

TOUCH_S = 3.0
STALE_S = 15.0
SWEEP_S = 5.0

HANDLERS: dict[JobKind, JobHandler] = {
    JobKind.BATCH: run_batch,
    JobKind.POSTCALL: run_postcall,
    JobKind.RETRANSCRIBE: run_retranscribe,
}


class _Progress:
    """Latest progress reported by a handler thread; the heartbeat writes it out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = (0, "starting")

    def __call__(self, fraction: float, message: str) -> None:
        with self._lock:
            self.value = (int(min(max(fraction, 0.0), 1.0) * 99), message)

    def get(self) -> tuple[int, str]:
        with self._lock:
            return self.value


def _with_progress(progress: tuple[int, str], record: JobRecord) -> JobRecord:
    """The running job's progress, stamped now (a swept record goes back to processing)."""
    if record.status == JobState.QUEUED:
        record = record.transition(JobState.PROCESSING)
    if record.status != JobState.PROCESSING:
        return record
    return record.model_copy(
        update={"progress": progress[0], "message": progress[1], "updated_at": time.time()}
    )


def _finished(target: JobState, changes: Mapping[str, Any], record: JobRecord) -> JobRecord:
    """The final transition; a record already final (another run of the job) stays as it is."""
    if record.status.terminal:
        log.info("job %s was already %s; keeping that", record.id, record.status)
        return record
    if record.status == JobState.QUEUED:
        record = record.transition(JobState.PROCESSING)
    return record.transition(target, **changes)


def _retrying(now: float, record: JobRecord) -> JobRecord:
    if record.status != JobState.PROCESSING or now - record.updated_at < STALE_S:
        return record
    return record.transition(
        JobState.QUEUED,
        message=f"retrying: attempt {record.attempts} was interrupted",
    )


class Worker:
    durable = "workers"

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        notifier: Notifier,
        models: WhisperModels | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.notifier = notifier
        self.models = models or WhisperModels(
            settings.data_dir, device=resolve_device(settings.postcall.device).kind
        )
        self._diarizer: DiarizationProcess | None = None
        self._diarizer_lock = threading.Lock()
        self._tasks = TaskSet("job worker")
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.failures: collections.Counter[str] = collections.Counter()  # by error code

    def diarizer(self) -> "SpeakerDiarizer":
        from engines.diarization_models import find_model_dir
        from engines.diarization_process import DiarizationProcess

        with self._diarizer_lock:
            if self._diarizer is None:
                self._diarizer = DiarizationProcess(find_model_dir(self.settings.data_dir))
            return self._diarizer

    async def start(self) -> None:
        self._sub = await self.store.js.pull_subscribe(
            self.store.work_subjects,
            durable=self.durable,
            stream=self.store.stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.settings.postcall.job_ack_wait_s,
                max_deliver=-1,
                max_ack_pending=1000,
            ),
        )
        self._task = self._tasks.spawn(self._run(), "jobs")
        self._tasks.spawn(self._sweep(), "stale-job sweep")

    @property
    def alive(self) -> bool:
        """The job loop runs (it ends only through :meth:`stop` or a bug in the loop itself)."""
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        self._stopping = True
        await self._tasks.aclose()
        if self._diarizer is not None:
            self._diarizer.close()

    async def _run(self) -> None:
        async for msg in fetch_forever(self._sub, lambda: self._stopping):
            try:
                await self.handle(msg)
            except asyncio.CancelledError:
                with contextlib.suppress(nats.errors.Error):
                    await msg.nak()
                raise
            except nats.errors.Error:
                log.warning(
                    "job message %s not finished; it will be redelivered",
                    msg.data,
                    exc_info=True,
                )
            except Exception:
                log.exception("job message %s failed; it will be redelivered", msg.data)
                with contextlib.suppress(nats.errors.Error):
                    await msg.nak(delay=self.settings.postcall.job_ack_wait_s)

    async def _sweep(self) -> None:
        """Marks jobs whose worker died (record untouched for STALE_S) as retrying."""
        while True:
            try:
                for record in await self.store.all():
                    if record.status == JobState.PROCESSING:
                        with contextlib.suppress(JobNotFoundError):
                            await self.store.modify(record.id, partial(_retrying, time.time()))
            except nats.errors.Error:
                log.warning("stale-job sweep failed", exc_info=True)
            await asyncio.sleep(SWEEP_S)

    async def handle(self, msg: Msg) -> None:
        try:
            job_id = str(json.loads(msg.data)["id"])
        except (ValueError, KeyError, TypeError):
            log.warning("dropping a malformed job message on %s: %r", msg.subject, msg.data[:200])
            await msg.term()
            return
        try:
            record = await self.store.get(job_id)
        except JobNotFoundError:
            await msg.ack()
            return
        if record.status.terminal:
            await self._announce(record)
            await msg.ack()
            return
        if msg.metadata.num_delivered > self.settings.postcall.job_max_attempts:
            failed = await self.store.transition(
                job_id,
                JobState.FAILED,
                message="failed",
                error={
                    "code": ErrorCode.INTERNAL,
                    "message": f"interrupted {msg.metadata.num_delivered - 1} times; giving up",
                },
            )
            await self._announce(failed)
            await msg.ack()
            return
        try:
            record = await self.store.transition(
                job_id,
                JobState.PROCESSING,
                progress=0,
                message="starting",
                attempts=record.attempts + 1,
            )
            final = await self._execute(record, msg)
        except JobNotFoundError:  # deleted while it ran: drop what it wrote meanwhile
            await self.store.delete_files(job_id)
            await msg.ack()
            return
        await self._announce(final)
        await msg.ack()

    async def _execute(self, record: JobRecord, msg: Msg) -> JobRecord:
        progress = _Progress()
        beat = self._tasks.spawn(
            self._heartbeat(record.id, msg, progress), f"heartbeat {record.id}"
        )
        ctx = JobContext(record, self.settings, self.store, self.models, progress, self.diarizer)
        try:
            transcript = await HANDLERS[record.kind](ctx)
            progress(0.96, "finishing")
            transcript = await finish(transcript, record, self.settings)
            names = await store_results(self.store, record.id, transcript)
            if record.kind == JobKind.RETRANSCRIBE and record.source.parent_id:
                await self._revise_parent(record.source.parent_id, transcript)
        except JobFailure as failure:
            return await self._fail(record.id, failure.code, failure.message)
        except (JobNotFoundError, asyncio.CancelledError):
            raise
        except Exception as exc:  # a bug or an engine crash must fail the job, not the worker
            log.exception("job %s crashed", record.id)
            return await self._fail(record.id, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        finally:
            await cancel_and_wait(beat)
        changes = {"progress": 100, "message": "completed", "results": names}
        return await self.store.modify(record.id, partial(_finished, JobState.COMPLETED, changes))

    async def _revise_parent(self, parent_id: str, transcript: Transcript) -> None:
        try:
            await self.store.get(parent_id)
        except JobNotFoundError as exc:
            raise JobFailure(
                ErrorCode.NOT_FOUND, f"transcript {parent_id} was deleted meanwhile"
            ) from exc
        await store_results(self.store, parent_id, transcript)

    async def _fail(self, job_id: str, code: str, message: str) -> JobRecord:
        self.failures[code] += 1
        changes = {"message": "failed", "error": {"code": code, "message": message}}
        return await self.store.modify(job_id, partial(_finished, JobState.FAILED, changes))

    async def _heartbeat(self, job_id: str, msg: Msg, progress: _Progress) -> None:
        interval = min(self.settings.postcall.job_ack_wait_s / 4, 1.0)
        written, written_at = (0, "starting"), time.monotonic()
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(nats.errors.Error):
                await msg.in_progress()
            current = progress.get()
            if current != written or time.monotonic() - written_at >= TOUCH_S:
                written, written_at = current, time.monotonic()
                with contextlib.suppress(JobNotFoundError, nats.errors.Error):
                    await self.store.modify(job_id, partial(_with_progress, current))

    async def _announce(self, record: JobRecord) -> None:
        """Send the job's final event; a no-op when it went out before (redelivery)."""
        url = record.webhook_url
        if record.status == JobState.FAILED:
            await self.notifier.notify(
                record.id, WebhookEventType.TRANSCRIPT_FAILED, event_data(record), url
            )
        elif record.kind == JobKind.BATCH:
            await self.notifier.notify(
                record.id, WebhookEventType.TRANSCRIPT_DONE, event_data(record), url
            )
        else:
            transcript_id = record.source.parent_id or record.id
            extra = {
                "transcript_id": transcript_id,
                "segment_id": record.source.segment_id,
                "call_id": record.source.call_id,
            }
            await self.notifier.notify(
                record.id, WebhookEventType.TRANSCRIPT_REVISED, event_data(record, **extra), url
            )


async def run_worker(
    settings: Settings, stop: asyncio.Event, on_ready: Callable[[], None] | None = None
) -> None:
    """Connect, consume jobs and deliver webhooks until ``stop`` is set."""
    if not settings.nats.url:
        raise SystemExit(
            "the worker needs NATS_URL (or nats.url) pointing at the server with JetStream"
        )
    nc = await nats.connect(settings.nats.url, max_reconnect_attempts=-1)
    try:
        store = await JobStore.open(nc, settings.nats.subject_prefix)
        notifier = await Notifier.open(nc, settings.nats.subject_prefix)
        worker = Worker(settings, store, notifier)
        dispatcher = WebhookDispatcher(notifier, settings.postcall, settings.api.allow_private_urls)
        await worker.start()
        await dispatcher.start()
        if on_ready is not None:
            on_ready()
        await stop.wait()
        await worker.stop()
        await dispatcher.stop()
    finally:
        await nc.close()


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(load_settings(), stop, on_ready=lambda: print("worker ready", flush=True))

    asyncio.run(serve())


if __name__ == "__main__":
    main()
