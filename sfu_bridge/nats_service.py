"""The room-session requests over NATS request/reply, with the same JSON bodies as HTTP.

Invites arrive on ``<prefix>.v1.invite`` in the queue group ``roomscribe-bridge``, so several
bot processes share them; the process that took an invite answers that session's own subjects.
"""

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import BaseModel

from protocol import ErrorCode
from protocol.errors import ServiceError
from sfu_bridge import room_session as rooms
from sfu_bridge.bridge import Bridge
from sfu_bridge.errors import BridgeError
from sfu_bridge.http import parse_json
from sfu_bridge.peer import PeerSession
from sfu_bridge.room_claims import RoomClaims

log = logging.getLogger(__name__)

QUEUE_GROUP = "roomscribe-bridge"
FORWARD_TIMEOUT_S = 10.0


def reply_body(result: BaseModel | None = None, error: BridgeError | None = None) -> bytes:
    body: dict[str, Any]
    if error is not None:
        body = {"ok": False, "error": error.to_json()}
    else:
        body = {"ok": True, **(result.model_dump() if result is not None else {})}
    return json.dumps(body).encode()


def _as_bridge_error(exc: Exception, subject: str) -> BridgeError:
    """What a NATS requester is answered when handling its request raised ``exc``."""
    if isinstance(exc, BridgeError):
        return exc
    if isinstance(exc, ServiceError):  # the service's own refusals (capacity...)
        return BridgeError(exc.status, exc.code, exc.message)
    log.exception("NATS request on %s failed", subject, exc_info=exc)
    return BridgeError(500, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")


class BridgeNatsService:
    def __init__(self, bridge: Bridge, nc: Client, claims: RoomClaims | None = None) -> None:
        self.bridge = bridge
        self.nc = nc
        self.subjects = bridge.runtime.subjects
        self.claims = claims
        self._invites: list[Subscription] = []
        self._sessions: dict[str, list[Subscription]] = {}
        bridge.peer_closed_hooks.append(self._peer_closed)

    def held_rooms(self) -> set[str]:
        """Rooms with a peer or a call on this bot."""
        return {peer.room for peer in self.bridge.peers.values()} | set(self.bridge.rooms)

    async def start(self) -> None:
        self._invites = [
            await self.nc.subscribe(self.subjects.invite, queue=QUEUE_GROUP, cb=self._on_invite)
        ]
        if self.claims is not None:
            await self.claims.start()
            self._invites.append(
                await self.nc.subscribe(self.claims.invite_subject, cb=self._on_own_invite)
            )
        await self.nc.flush()  # the server knows the subscription before start() returns

    async def _respond(self, msg: Msg, action: Callable[[], Awaitable[BaseModel | None]]) -> None:
        result: BaseModel | None = None
        error: BridgeError | None = None
        try:
            result = await action()
        except Exception as exc:
            error = _as_bridge_error(exc, msg.subject)
        if msg.reply:
            await msg.respond(reply_body(result, error))

    async def _on_invite(self, msg: Msg) -> None:
        """A room lives on one bot: an invite for a room another live bot holds goes there."""
        try:
            body = parse_json(rooms.CreateSession, msg.data)
            holder = await self.claims.holder(body.room) if self.claims is not None else None
        except Exception as exc:
            if msg.reply:
                await msg.respond(reply_body(error=_as_bridge_error(exc, msg.subject)))
            return
        if holder is not None and await self._forward(msg, body.room, holder):
            return
        await self._create(msg, body)

    async def _forward(self, msg: Msg, room: str, holder: str) -> bool:
        """Relay the invite to ``holder``; False (and the room is ours) when it does not answer."""
        assert self.claims is not None
        try:
            answer = await self.nc.request(
                self.claims.invite_subject_of(holder), msg.data, timeout=FORWARD_TIMEOUT_S
            )
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            log.warning("room %s: its bot %s does not answer; taking the room", room, holder)
            stale = await self.claims.read(room)
            if stale is not None and stale.bot == holder:
                await self.claims.take_over(room, stale)
            return False
        if msg.reply:
            await msg.respond(answer.data)
        return True

    async def _on_own_invite(self, msg: Msg) -> None:
        """An invite forwarded to this bot, which holds the room."""
        await self._create(msg, None)

    async def _create(self, msg: Msg, body: rooms.CreateSession | None) -> None:
        async def create() -> rooms.SessionAnswer:
            parsed = body or parse_json(rooms.CreateSession, msg.data)
            answer = await rooms.create_session(self.bridge, parsed)
            await self._follow(answer.session_id)
            return answer

        await self._respond(msg, create)

    async def _follow(self, session_id: str) -> None:
        def handler(verb: str) -> Callable[[Msg], Awaitable[None]]:
            async def on_message(msg: Msg) -> None:
                # unsubscribing cancels the running callback: answer a delete first
                leaving = self._sessions.pop(session_id, []) if verb == "delete" else []
                await self._respond(msg, lambda: self._session_request(session_id, verb, msg.data))
                for sub in leaving:
                    await sub.unsubscribe()

            return on_message

        self._sessions[session_id] = [
            await self.nc.subscribe(self.subjects.session(session_id, verb), cb=handler(verb))
            for verb in ("offer", "tracks", "delete")
        ]
        await self.nc.flush()  # subscribed before the invite's reply names the session

    async def _session_request(self, session_id: str, verb: str, data: bytes) -> BaseModel | None:
        if verb == "offer":
            return await rooms.reoffer(self.bridge, session_id, parse_json(rooms.Reoffer, data))
        if verb == "tracks":
            await rooms.update_tracks(
                self.bridge, session_id, parse_json(rooms.TrackMapUpdate, data)
            )
            return None
        await rooms.delete_session(self.bridge, session_id)
        return None

    async def _peer_closed(self, peer: PeerSession) -> None:
        for sub in self._sessions.pop(peer.id, []):
            await sub.unsubscribe()
        if self.claims is not None and not any(
            p.room == peer.room for p in self.bridge.peers.values() if p is not peer
        ):
            await self.claims.release(peer.room)

    async def aclose(self) -> None:
        for invites in self._invites:
            await invites.unsubscribe()
        self._invites = []
        if self.claims is not None:
            await self.claims.aclose()
        for session_id in list(self._sessions):
            for sub in self._sessions.pop(session_id):
                await sub.unsubscribe()
        if self._peer_closed in self.bridge.peer_closed_hooks:
            self.bridge.peer_closed_hooks.remove(self._peer_closed)
