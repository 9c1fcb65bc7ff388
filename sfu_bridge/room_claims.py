"""Which bot holds which room, when several bot processes share one NATS.

Invites arrive through a queue group, so any bot may take one; a room must still live on one
bot (one call, one recording, one post-call transcript). The first bot to take an invite for a
room claims it in the KV bucket ``<base>_rooms`` (create, so only one claim wins) and keeps the
claim fresh while the room has peers or a call; a later invite taken by another bot is
forwarded to the holder's own invite subject. A claim not refreshed for ``ttl_s`` belongs to a
bot that is gone: the first survivor to notice marks it lost (compare-and-set, so once),
publishes a ``BOT_LOST`` error frame on the room's events subject (the inviter re-invites;
the next invite lands on a live bot) and removes it.
"""

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import nats.js.errors
from nats.aio.client import Client

from pipeline.jobs import bucket_base, open_kv
from pipeline.js_read import kv_keys
from pipeline.tasks import cancel_and_wait
from protocol import ErrorCode, ErrorFrame, Subjects
from protocol.subjects import decode_token, encode_token

log = logging.getLogger(__name__)


def claim_key(room: str) -> str:
    """KV keys allow ``=`` but not ``~``: the room's subject token with one for the other."""
    return encode_token(room, "room").replace("~", "=")


def room_of(key: str) -> str:
    return decode_token(key.replace("=", "~"))


@dataclass(frozen=True)
class Claim:
    bot: str
    at: float  # wall clock of the last refresh
    revision: int


class RoomClaims:
    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        rooms: Callable[[], Iterable[str]],
        ttl_s: float = 15.0,
        bot_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self.rooms = rooms  # the rooms this bot holds now (peers or a call)
        self.ttl_s = ttl_s
        self.bot_id = bot_id or uuid.uuid4().hex[:12]
        self.clock = clock
        self.bucket = f"{bucket_base(subjects.prefix)}_rooms"
        self._kv: Any = None
        self._task: asyncio.Task[None] | None = None
        self.lost_marked = 0

    @property
    def invite_subject(self) -> str:
        """This bot's own invite subject, where other bots forward invites for its rooms."""
        return f"{self.subjects.prefix}.v1.bots.{self.bot_id}.invite"

    def invite_subject_of(self, bot: str) -> str:
        return f"{self.subjects.prefix}.v1.bots.{bot}.invite"

    async def start(self) -> None:
        self._kv = await open_kv(self.nc.jetstream(), self.bucket)
        self._task = asyncio.create_task(self._keep(), name="room claims")

    async def aclose(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        for room in list(self.rooms()):
            await self.release(room)

    def _value(self) -> bytes:
        return json.dumps({"bot": self.bot_id, "at": self.clock()}).encode()

    async def read(self, room: str) -> Claim | None:
        try:
            entry = await self._kv.get(claim_key(room))
        except nats.js.errors.KeyNotFoundError:
            return None
        if not entry.value:
            return None
        body = json.loads(entry.value)
        return Claim(str(body["bot"]), float(body["at"]), int(entry.revision))

    async def holder(self, room: str) -> str | None:
        """Claim ``room`` for this bot, or name the live bot that holds it (None: ours)."""
        key = claim_key(room)
        for _ in range(3):
            try:
                await self._kv.create(key, self._value())
                return None
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            claim = await self.read(room)
            if claim is None:
                continue  # released between the two calls: try to create again
            if claim.bot == self.bot_id:
                return None
            if self.clock() - claim.at <= self.ttl_s:
                return claim.bot
            await self.take_over(room, claim)
            return None
        raise RuntimeError(f"room {room!r}: its claim kept changing")

    async def take_over(self, room: str, stale: Claim) -> None:
        """The holder did not answer or let its claim go stale: the room is this bot's now."""
        with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
            await self._kv.update(claim_key(room), self._value(), last=stale.revision)

    async def release(self, room: str) -> None:
        claim = await self.read(room)
        if claim is not None and claim.bot == self.bot_id:
            with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                await self._kv.delete(claim_key(room), last=claim.revision)

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                for room in set(self.rooms()):
                    await self._kv.put(claim_key(room), self._value())
                await self.sweep()
            except Exception:
                log.exception("room claims: refresh failed (retrying)")

    async def sweep(self) -> list[str]:
        """Mark the rooms of bots that stopped refreshing as lost; returns those rooms."""
        lost = []
        for key in await kv_keys(self.nc.jetstream(), self.bucket):
            room = room_of(key)
            claim = await self.read(room)
            if claim is None or claim.bot == self.bot_id or self.clock() - claim.at <= self.ttl_s:
                continue
            try:  # once: the first survivor's delete wins
                await self._kv.delete(key, last=claim.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            self.lost_marked += 1
            lost.append(room)
            frame = ErrorFrame(
                room=room,
                code=ErrorCode.BOT_LOST,
                message=(
                    f"the bot holding this room ({claim.bot}) stopped answering; invite the "
                    "bot again to resume captions"
                ),
            )
            await self.nc.publish(self.subjects.events(room), frame.model_dump_json().encode())
            log.warning("room %s: bot %s is gone; BOT_LOST sent", room, claim.bot)
        return lost
