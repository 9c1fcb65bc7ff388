"""Calls in progress, known to every bot on the NATS, so that a bot (or its machine) that dies
mid-call does not take the call's post-call pass with it.

Every ``postcall.checkpoint_s`` a bot copies what each of its open calls recorded since the
last copy into the object store (``calls/<id>/<wav>.part<n>``, beside ``call.json``,
``finals.jsonl`` and a ``checkpoint.json`` manifest) and refreshes the call's entry in the KV
bucket ``<base>_live_calls``. An entry not refreshed for ``stale_s`` belongs to a bot that is
gone: the first survivor to notice deletes it (compare-and-set, so exactly once), joins the
parts into the call's WAVs, ends the call as ``bot_lost`` at its last checkpoint and hands it
over to its one post-call job, as the lost bot would have. If that bot comes back, its own
start-up recovery hands the same call over under the same job id, which queues nothing new.
"""

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import nats.js.errors
from nats.aio.client import Client

from config import Settings
from pipeline.call.session import EndReason
from pipeline.handover import CallHandover
from pipeline.jobs import JobNotFoundError, JobStore, bucket_base, open_kv
from pipeline.js_read import kv_keys
from pipeline.recorder import WAV_HEADER_BYTES, CallRecord, wav_header
from pipeline.tasks import TaskSet

log = logging.getLogger("roomscribe.live_calls")

MANIFEST = "checkpoint.json"
# the live call's record and finals under names of their own: a checkpoint racing the call's
# end never overwrites what the hand-over stored
COPIES = {"call.json": "checkpoint-call.json", "finals.jsonl": "checkpoint-finals.jsonl"}


def part_name(file: str, index: int) -> str:
    return f"{file}.part{index:05d}"


class LiveCalls:
    def __init__(
        self,
        nc: Client,
        store: JobStore,
        handover: CallHandover,
        settings: Settings,
        bot_id: str,
        open_calls: Callable[[], Iterable[str]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.nc = nc
        self.store = store
        self.handover = handover
        self.settings = settings
        self.bot_id = bot_id
        self.open_calls = open_calls
        self.clock = clock
        self.interval_s = settings.postcall.checkpoint_s
        self.stale_s = max(3 * self.interval_s, settings.postcall.checkpoint_stale_s)
        self.bucket = f"{bucket_base(settings.nats.subject_prefix)}_live_calls"
        self.taken_over = 0
        self._kv: Any = None
        self._sent: dict[str, dict[str, tuple[int, int]]] = {}  # call -> file -> (bytes, parts)
        self._tasks = TaskSet("live calls")

    async def start(self) -> None:
        self._kv = await open_kv(self.nc.jetstream(), self.bucket)
        self._tasks.spawn(self._keep(), "checkpoints")

    async def stop(self) -> None:
        await self._tasks.aclose()

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.run_once()
            except Exception:
                log.exception("live calls: checkpoint or sweep failed (retrying)")

    async def run_once(self) -> None:
        open_now = set(self.open_calls())
        for call_id in open_now:
            await self.checkpoint(call_id)
        for call_id in set(self._sent) - open_now:
            await self._forget(call_id)
        await self.sweep()

    async def checkpoint(self, call_id: str) -> None:
        """Copy what ``call_id`` recorded since the last copy into the object store."""
        directory = self.settings.calls_dir / call_id
        call = CallRecord.load(directory)
        sent = self._sent.setdefault(call_id, {})
        parts = {}
        for participant in call.participants:
            path = directory / participant.file
            done, count = sent.get(participant.file, (WAV_HEADER_BYTES, 0))
            size = path.stat().st_size if path.is_file() else done
            size -= (size - WAV_HEADER_BYTES) % 2
            if size > done:
                with open(path, "rb") as wav:  # noqa: ASYNC230 - at most checkpoint_s of audio
                    wav.seek(done)
                    data = wav.read(size - done)
                await self.store.put_call_bytes(call_id, part_name(participant.file, count), data)
                done, count = done + len(data), count + 1
                sent[participant.file] = (done, count)
            parts[participant.file] = count
        for name, copy in COPIES.items():
            if (directory / name).is_file():
                await self.store.put_call_file(call_id, copy, directory / name)
        at = self.clock()
        manifest = {"bot": self.bot_id, "at": at, "parts": parts}
        await self.store.put_call_bytes(call_id, MANIFEST, json.dumps(manifest).encode())
        entry = {"bot": self.bot_id, "at": at, "room": call.room}
        await self._kv.put(call_id, json.dumps(entry).encode())

    async def _forget(self, call_id: str) -> None:
        """The call ended here and was handed over: its entry and parts go."""
        sent = self._sent.pop(call_id, {})
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            await self._kv.delete(call_id)
        await self._delete_parts(call_id, {file: count for file, (_, count) in sent.items()})

    async def _delete_parts(self, call_id: str, parts: dict[str, int]) -> None:
        for file, count in parts.items():
            for index in range(count):
                await self.store.delete_call_file(call_id, part_name(file, index))
        for name in (MANIFEST, *COPIES.values()):
            await self.store.delete_call_file(call_id, name)

    async def sweep(self) -> list[str]:
        """Take over the calls of bots that stopped checkpointing; returns their ids."""
        taken = []
        for call_id in await kv_keys(self.nc.jetstream(), self.bucket):
            try:
                entry = await self._kv.get(call_id)
            except nats.js.errors.KeyNotFoundError:
                continue
            if not entry.value:
                continue
            body = json.loads(entry.value)
            if body["bot"] == self.bot_id or self.clock() - float(body["at"]) <= self.stale_s:
                continue
            try:  # once: the first survivor's delete wins
                await self._kv.delete(call_id, last=entry.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            log.warning("call %s: bot %s is gone; taking its post-call pass", call_id, body["bot"])
            try:
                await self.take_over(call_id)
            except Exception:
                log.exception("call %s: taking over from bot %s failed", call_id, body["bot"])
                continue
            self.taken_over += 1
            taken.append(call_id)
        return taken

    async def take_over(self, call_id: str) -> CallRecord:
        """Rebuild a lost bot's call from its checkpoint and hand it over."""
        directory = self.settings.calls_dir / call_id
        directory.mkdir(parents=True, exist_ok=True)
        manifest = json.loads(await self.store.get_call_bytes(call_id, MANIFEST))
        for name, copy in COPIES.items():
            with contextlib.suppress(JobNotFoundError):
                await self.store.download_call_file(call_id, copy, directory / name)
        call = CallRecord.load(directory)
        for participant in call.participants:
            await self._join(
                call_id, participant.file, manifest["parts"].get(participant.file, 0), directory
            )
        call.ended_at = float(manifest["at"])
        call.end_reason = EndReason.BOT_LOST
        call.handed_over = False
        call.save()
        await self.handover.hand_over(call)
        await self._delete_parts(call_id, manifest["parts"])
        return call

    async def _join(self, call_id: str, file: str, parts: int, directory: Path) -> None:
        pieces = [
            await self.store.get_call_bytes(call_id, part_name(file, i)) for i in range(parts)
        ]
        data = b"".join(pieces)
        (directory / file).write_bytes(wav_header(len(data)) + data)
