"""The bridge: every peer session and every room's call in this process."""

import logging
from collections.abc import Awaitable, Callable

from config.settings import BridgeSettings
from pipeline.runtime import LiveRuntime
from pipeline.tasks import TaskSet
from protocol import ErrorCode
from sfu_bridge.call_room import CallRoom, CallState
from sfu_bridge.errors import BridgeError
from sfu_bridge.peer import PeerSession

log = logging.getLogger(__name__)


class Bridge:
    """Owns the peer sessions (WHIP, room sessions, SFU adapters) and one call per room.

    A room's call ends when its last peer session closes, or by itself when idle; an idle end
    closes the room's peer sessions too (the bot leaves).
    """

    def __init__(self, runtime: LiveRuntime) -> None:
        self.runtime = runtime
        self.settings: BridgeSettings = runtime.settings.bridge
        self.rooms: dict[str, CallRoom] = {}
        self.peers: dict[str, PeerSession] = {}
        self.tasks = TaskSet("bridge")
        self.peer_closed_hooks: list[Callable[[PeerSession], Awaitable[None]]] = []
        self.closed = False

    def call_room(self, room: str) -> CallRoom:
        current = self.rooms.get(room)
        if current is None or current.state is CallState.ENDED:
            current = CallRoom(self.runtime, room, self.settings.idle_timeout_s, self._room_ended)
            self.rooms[room] = current
        return current

    def heard(self, room: str) -> None:
        current = self.rooms.get(room)
        if current is not None:
            current.heard()

    def add_peer(self, peer: PeerSession) -> None:
        if self.closed:
            raise BridgeError(503, ErrorCode.CAPACITY, "the bridge is shutting down")
        self.peers[peer.id] = peer

    def peer(self, session_id: str, kind: type[PeerSession]) -> PeerSession:
        found = self.peers.get(session_id)
        if found is None or not isinstance(found, kind) or found.closed:
            raise BridgeError(404, ErrorCode.NOT_FOUND, f"no session {session_id!r}")
        return found

    async def close_peer(self, peer: PeerSession, reason: str) -> None:
        """Closes one peer session; the room's call ends with ``reason`` if it was the last one."""
        if self.peers.get(peer.id) is not peer:
            return
        del self.peers[peer.id]
        await peer.close(reason)
        for hook in self.peer_closed_hooks:
            try:
                await hook(peer)
            except Exception:
                log.exception("peer-closed hook failed for session %s", peer.id)
        if not any(other.room == peer.room for other in self.peers.values()):
            call_room = self.rooms.get(peer.room)
            if call_room is not None:
                await call_room.end(reason)

    async def _room_ended(self, call_room: CallRoom, reason: str) -> None:
        if self.rooms.get(call_room.room) is call_room:
            del self.rooms[call_room.room]
        for peer in [p for p in self.peers.values() if p.room == call_room.room]:
            await self.close_peer(peer, reason)

    async def aclose(self) -> None:
        self.closed = True
        for peer in list(self.peers.values()):
            await self.close_peer(peer, "shutdown")
        for call_room in list(self.rooms.values()):
            await call_room.end("shutdown")
        await self.tasks.aclose()
