"""The bridge: every peer session and every room's call in this process."""

import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from config.settings import BridgeSettings
from engines.base import ModelNotFoundError
from engines.models import UnsupportedLanguageError
from pipeline.call import CallEndedError, CallLimits, CallSession, CallState, CapacityError
from pipeline.runtime import LiveRuntime
from pipeline.speaker_stream import SpeakerStream
from pipeline.tasks import TaskSet
from protocol import ErrorCode, ErrorFrame
from sfu_bridge.errors import BridgeError
from sfu_bridge.peer import PeerSession, TrackOwner
from sfu_bridge.track_audio import AudioStats
from sfu_bridge.udp import UdpDropCounter

log = logging.getLogger(__name__)


@dataclass
class ParticipantTarget:
    """One participant's speaker stream in a call, as a track feed's target."""

    call: CallSession
    owner: TrackOwner
    stream: SpeakerStream

    def push(self, pcm: np.ndarray, at: float) -> None:
        self.stream.push(pcm, at=at)

    async def close(self, reason: str) -> None:
        if self.call.participants.get(self.owner.participant) is self.stream:
            await self.call.remove_participant(self.owner.participant, reason)


class Bridge:
    """Owns the peer sessions (WHIP, room sessions, SFU adapters) and one call per room.

    A room's call starts with its first track and ends when its last peer session closes, or
    by itself when idle (``bridge.idle_timeout_s``); an idle end closes the room's peer
    sessions too (the bot leaves).
    """

    def __init__(self, runtime: LiveRuntime) -> None:
        self.runtime = runtime
        self.settings: BridgeSettings = runtime.settings.bridge
        self.rooms: dict[str, CallSession] = {}
        self.peers: dict[str, PeerSession] = {}
        self.tasks = TaskSet("bridge")
        self.peer_closed_hooks: list[Callable[[PeerSession], Awaitable[None]]] = []
        self.closed = False
        self.audio = AudioStats()
        self.udp = UdpDropCounter()
        self.udp_receive_buffer = 0  # bytes the OS granted on the last ICE socket

    def udp_drops(self) -> int | None:
        stats = self.udp.read()
        return stats.drops if stats is not None else None

    def metrics(self) -> Iterator[Metric]:
        """The bridge's counters, read at each ``/metrics`` scrape."""
        for name, help_text, value in (
            ("frames", "audio frames received from remote tracks", self.audio.frames),
            ("audio_seconds", "audio received from remote tracks", self.audio.audio_s),
            (
                "gap_seconds",
                "audio time with no packets (Opus DTX silence or loss), filled as silence",
                self.audio.gap_s,
            ),
        ):
            yield CounterMetricFamily(f"roomscribe_bridge_{name}", help_text, value=value)
        yield GaugeMetricFamily(
            "roomscribe_bridge_udp_receive_buffer_bytes",
            "SO_RCVBUF the OS granted on ICE sockets (bridge.udp_receive_buffer_kb)",
            value=self.udp_receive_buffer,
        )
        udp = self.udp.read()
        if udp is not None:
            yield CounterMetricFamily(
                "roomscribe_udp_drops",
                "datagrams the kernel dropped on this process's UDP sockets (buffer full)",
                value=udp.drops,
            )
            yield GaugeMetricFamily(
                "roomscribe_udp_receive_queue_bytes",
                "bytes waiting in this process's UDP receive buffers",
                value=udp.queued_bytes,
            )
            yield GaugeMetricFamily(
                "roomscribe_udp_sockets", "this process's UDP sockets", value=udp.sockets
            )

    @property
    def credentials(self) -> list[str]:
        """What a bridge route accepts: its own bearer tokens and every API key."""
        return [*self.settings.bearer_tokens, *self.runtime.settings.api.api_keys]

    async def open_track(self, room: str, owner: TrackOwner) -> ParticipantTarget | None:
        """A target for the owner's audio, starting the room's call if needed; ``None`` when
        the track is not captioned (no capacity, the call is ending, no live model knows
        its language: an error frame says so)."""
        call = self.rooms.get(room)
        if call is None or call.state is not CallState.OPEN:
            call = CallSession(self.runtime, room, CallLimits(self.settings.idle_timeout_s))
            call.on_ended.append(self._room_ended)
            self.rooms[room] = call
            await call.start(watch=True)
        try:
            stream = await call.admit(owner.participant, owner.name, owner.language)
        except (CapacityError, CallEndedError):
            return None
        except (UnsupportedLanguageError, ModelNotFoundError) as exc:
            self.runtime.sink.emit(
                ErrorFrame(
                    code=ErrorCode(exc.code),
                    message=f"this track is not captioned: {exc}",
                    room=room,
                    participant=owner.participant,
                )
            )
            return None
        return ParticipantTarget(call, owner, stream)

    def rename(self, room: str, participant: str, name: str) -> None:
        call = self.rooms.get(room)
        if call is not None and call.state is CallState.OPEN:
            call.rename(participant, name)

    def heard(self, room: str) -> None:
        call = self.rooms.get(room)
        if call is not None:
            call.heard()

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
            call = self.rooms.get(peer.room)
            if call is not None:
                await call.end(reason)

    async def _room_ended(self, call: CallSession, reason: str) -> None:
        if self.rooms.get(call.room) is call:
            del self.rooms[call.room]
        for peer in [p for p in self.peers.values() if p.room == call.room]:
            await self.close_peer(peer, reason)

    async def aclose(self) -> None:
        self.closed = True
        for peer in list(self.peers.values()):
            await self.close_peer(peer, "shutdown")
        for call in list(self.rooms.values()):
            await call.end("shutdown")
        await self.tasks.aclose()
