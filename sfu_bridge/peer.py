"""One aiortc peer connection receiving a room's tracks; subclasses say who is behind a mid."""

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from pipeline.tasks import TaskSet
from protocol import ErrorCode
from sfu_bridge.errors import BridgeError
from sfu_bridge.ice import gather_on, ice_configuration
from sfu_bridge.receive_decode import decode_on_loop
from sfu_bridge.sdp import MediaLine, parse_offer, with_opus_dtx
from sfu_bridge.track_audio import AudioTarget, TrackFeed, drain
from sfu_bridge.udp import enlarge_receive_buffers

if TYPE_CHECKING:
    from sfu_bridge.bridge import Bridge

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackOwner:
    """Who is behind a track: the participant the bridge captions it as."""

    participant: str
    name: str | None = None
    language: str | None = None


class PeerSession:
    """Answers offers, consumes every track it receives and routes audio by mid.

    Which participant a mid carries comes from :meth:`speaker_for`; when that changes for a mid,
    :meth:`rebind` flushes the old participant's stream and the next frame opens the new one.
    """

    kind = "peer"

    def __init__(
        self, bridge: "Bridge", room: str, ice_servers: list[dict[str, Any]] | None = None
    ) -> None:
        self.id = uuid.uuid4().hex
        self.bridge = bridge
        self.room = room
        settings = bridge.settings
        servers = settings.ice_servers if ice_servers is None else ice_servers
        self.pc = RTCPeerConnection(ice_configuration(servers))
        self.media: dict[str, MediaLine] = {}
        self.feeds: dict[str, TrackFeed] = {}
        self.closed = False
        self._tasks = TaskSet(f"{self.kind} {self.id}")
        self._negotiating = asyncio.Lock()
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_connection_state)

    def speaker_for(self, mid: str) -> TrackOwner | None:
        raise NotImplementedError

    async def accept_offer(
        self, sdp: str, remap: Callable[[list[MediaLine]], None] | None = None
    ) -> str:
        """Applies an offer (first or re-offer) and returns the SDP answer.

        ``remap`` updates who is behind which mid for this offer; it may reject the offer by
        raising :class:`BridgeError` before anything changed.
        """
        if self.closed:
            raise BridgeError(404, ErrorCode.NOT_FOUND, f"session {self.id} is closed")
        lines = parse_offer(sdp)
        async with self._negotiating:
            before = {mid: self.current_speaker(mid) for mid in self.feeds}
            self.check_offer(lines)
            if remap is not None:
                remap(lines)
            previous, self.media = self.media, {line.mid: line for line in lines}
            try:
                await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
                if self.bridge.settings.decode_on_loop:
                    decode_on_loop(self.pc)  # before a receiver starts: nothing awaited between
                answer = await self.pc.createAnswer()
                with gather_on(self.bridge.settings.host_addresses):
                    await self.pc.setLocalDescription(answer)
                if self.bridge.settings.udp_receive_buffer_kb:
                    granted = enlarge_receive_buffers(
                        self.pc, self.bridge.settings.udp_receive_buffer_kb * 1024
                    )
                    self.bridge.udp_receive_buffer = granted or self.bridge.udp_receive_buffer
            except (ValueError, KeyError, AssertionError) as exc:
                self.media = previous
                raise BridgeError(400, ErrorCode.INVALID_REQUEST, f"offer rejected: {exc}") from exc
            for mid, speaker in before.items():
                if self.current_speaker(mid) != speaker:
                    await self.rebind(mid)
        answer_sdp: str = self.pc.localDescription.sdp
        return with_opus_dtx(answer_sdp) if self.bridge.settings.opus_dtx else answer_sdp

    def current_speaker(self, mid: str) -> TrackOwner | None:
        line = self.media.get(mid)
        return self.speaker_for(mid) if line is not None and line.sending else None

    def check_offer(self, lines: list[MediaLine]) -> None:
        """Raise :class:`BridgeError` if an offer with these media lines is not acceptable."""

    def _mid_of(self, track: MediaStreamTrack) -> str | None:
        for transceiver in self.pc.getTransceivers():
            if transceiver.receiver.track is track:
                return transceiver.mid
        return None

    def _on_track(self, track: MediaStreamTrack) -> None:
        mid = self._mid_of(track)
        if track.kind != "audio" or mid is None:
            self._tasks.spawn(drain(track), f"drain {track.kind} {mid}")
            return
        feed = TrackFeed(
            track,
            open_target=lambda: self._open(mid),
            stall_s=self.bridge.settings.track_stall_s,
            on_audio=lambda: self.bridge.heard(self.room),
            stats=self.bridge.audio,
        )
        self.feeds[mid] = feed
        self._tasks.spawn(feed.run(), f"feed {mid}")

    async def _open(self, mid: str) -> AudioTarget | None:
        speaker = self.current_speaker(mid)
        if speaker is None or self.closed:
            return None
        return await self.bridge.open_track(self.room, speaker)

    async def rebind(self, mid: str, reason: str = "left") -> None:
        """The participant behind ``mid`` changed or left: flush its stream."""
        feed = self.feeds.get(mid)
        if feed is not None:
            await feed.release(reason)

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        log.info("%s session %s: connection %s", self.kind, self.id, state)
        if state == "failed":
            self.bridge.tasks.spawn(
                self.bridge.close_peer(self, "disconnected"), f"close {self.id}"
            )

    async def close(self, reason: str = "left") -> None:
        if self.closed:
            return
        self.closed = True
        for feed in list(self.feeds.values()):
            await feed.release(reason)
        await self.pc.close()
        await self._tasks.aclose()
