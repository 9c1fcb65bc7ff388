"""A call's hand-over to post-call: its recording into the object store, its one post-call
job and its ``call.ended`` event.

Every step is idempotent (the job id is fixed when the call opens, stored files are
overwritten, events are deduplicated by job id), so a call interrupted at any point, or a
hand-over that failed (NATS away), is handed over by :meth:`CallHandover.recover`, once: at
start-up and then every ``postcall.handover_retry_s``. A call still ``live`` in ``call.json``
that this process does not hold open was interrupted by a crash: its recordings are repaired
and it ends with reason ``interrupted``.
"""

import logging
from collections.abc import Collection
from typing import Any

from config.settings import Settings
from pipeline.call.session import EndReason
from pipeline.jobs import JobRecord, JobStore
from pipeline.postcall import submit_postcall
from pipeline.recorder import CallRecord, recorded_calls, repair_wav
from pipeline.webhooks import Notifier
from protocol.webhooks import CallEndedData, CallParticipant, WebhookEventType

log = logging.getLogger("roomscribe.handover")


def call_ended_data(call: CallRecord, job_id: str) -> dict[str, Any]:
    return CallEndedData(
        call_id=call.call_id,
        room=call.room,
        started_at=call.started_at,
        ended_at=call.ended_at,
        end_reason=call.end_reason,
        participants=[
            CallParticipant(participant=p.participant, name=p.name, offset=p.offset)
            for p in call.participants
        ],
        job_id=job_id,
    ).model_dump()


class CallHandover:
    def __init__(self, store: JobStore, notifier: Notifier, settings: Settings) -> None:
        self.store = store
        self.notifier = notifier
        self.settings = settings

    async def hand_over(self, call: CallRecord) -> JobRecord:
        """Upload the ended call's files, queue its post-call job, send ``call.ended``."""
        for name in call.files:
            path = call.directory / name
            if path.is_file():
                await self.store.put_call_file(call.call_id, name, path)
        record = await submit_postcall(self.store, self.settings, call.call_id, job_id=call.job_id)
        await self.notifier.notify(
            record.id,
            WebhookEventType.CALL_ENDED,
            call_ended_data(call, record.id),
            record.webhook_url,
        )
        call.job_id = record.id
        call.handed_over = True
        call.save()
        return record

    async def recover(self, open_calls: Collection[str] = ()) -> list[CallRecord]:
        """Hand over every call of the data dir not handed over yet, except ``open_calls``
        (live in this process)."""
        recovered = []
        for call in recorded_calls(self.settings.calls_dir):
            if call.handed_over or call.call_id in open_calls:
                continue
            if call.ended_at is None:
                end_interrupted(call)
            try:
                await self.hand_over(call)
            except Exception:
                log.exception("could not hand over call %s; next start retries", call.call_id)
                continue
            log.info("handed over call %s (%s)", call.call_id, call.end_reason)
            recovered.append(call)
        return recovered


def end_interrupted(call: CallRecord) -> None:
    """End a call that a crash left open, at the time its files were last written."""
    last = call.started_at
    for name in call.files:
        path = call.directory / name
        if not path.is_file():
            continue
        if name.endswith(".wav"):
            repair_wav(path)
        last = max(last, path.stat().st_mtime)
    call.ended_at = last
    call.end_reason = EndReason.INTERRUPTED
    call.save()
