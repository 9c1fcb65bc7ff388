"""Room sessions: one peer connection per room carrying many participants' tracks.

The ``tracks`` map (mid -> participant) is authoritative; a sending mid it does not name falls
back to the msid stream id of its media line. aiortc track ids and SSRCs are never used.
"""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from protocol import ErrorCode
from sfu_bridge.bridge import Bridge
from sfu_bridge.errors import BridgeError
from sfu_bridge.peer import PeerSession, TrackOwner
from sfu_bridge.sdp import MediaLine


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrackInfo(_Body):
    participant: str = Field(min_length=1, max_length=256)
    name: str | None = None
    language: str | None = None


class CreateSession(_Body):
    room: str = Field(min_length=1, max_length=256)
    sdp: str
    tracks: dict[str, TrackInfo] = Field(default_factory=dict)
    ice_servers: list[dict[str, Any]] | None = None


class Reoffer(_Body):
    sdp: str
    tracks: dict[str, TrackInfo] = Field(default_factory=dict, description="merged into the map")


class TrackMapUpdate(_Body):
    tracks: dict[str, TrackInfo | None] = Field(description="null unmaps a mid")


class SessionAnswer(BaseModel):
    session_id: str
    sdp: str


class RoomSession(PeerSession):
    kind = "room"

    def __init__(self, bridge: Bridge, room: str, ice_servers: list[dict[str, Any]] | None) -> None:
        super().__init__(bridge, room, ice_servers)
        self.tracks: dict[str, TrackOwner] = {}

    def speaker_for(self, mid: str) -> TrackOwner | None:
        mapped = self.tracks.get(mid)
        if mapped is not None:
            return mapped
        line = self.media.get(mid)
        if line is None or line.kind != "audio" or not line.stream_id:
            return None
        return TrackOwner(line.stream_id)

    async def offer(self, sdp: str, tracks: dict[str, TrackInfo]) -> str:
        def remap(lines: list[MediaLine]) -> None:
            _check_mids(tracks, {line.mid for line in lines})
            self.tracks.update({mid: _speaker(info) for mid, info in tracks.items()})

        return await self.accept_offer(sdp, remap)

    async def update_tracks(self, tracks: dict[str, TrackInfo | None]) -> None:
        _check_mids(tracks, set(self.media))
        for mid, info in tracks.items():
            old = self.current_speaker(mid)
            if info is None:
                self.tracks.pop(mid, None)
            else:
                self.tracks[mid] = _speaker(info)
            new = self.current_speaker(mid)
            if old is not None and new is not None and old.participant == new.participant:
                if new.name and new.name != old.name:
                    self.bridge.rename(self.room, new.participant, new.name)
            elif old != new:
                await self.rebind(mid, "replaced")


def _speaker(info: TrackInfo) -> TrackOwner:
    return TrackOwner(info.participant, info.name, info.language)


def _check_mids(tracks: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(tracks) - known)
    if unknown:
        raise BridgeError(
            422, ErrorCode.UNKNOWN_MID, f"track map names mids not in the SDP: {', '.join(unknown)}"
        )


async def create_session(bridge: Bridge, request: CreateSession) -> SessionAnswer:
    if bridge.runtime.admission is not None:
        bridge.runtime.admission.check("webrtc")
    session = RoomSession(bridge, request.room, request.ice_servers)
    try:
        sdp = await session.offer(request.sdp, request.tracks)
        bridge.add_peer(session)
    except BaseException:
        await session.close("rejected")
        raise
    return SessionAnswer(session_id=session.id, sdp=sdp)


def room_session(bridge: Bridge, session_id: str) -> RoomSession:
    session = bridge.peer(session_id, RoomSession)
    assert isinstance(session, RoomSession)
    return session


async def reoffer(bridge: Bridge, session_id: str, request: Reoffer) -> SessionAnswer:
    session = room_session(bridge, session_id)
    return SessionAnswer(
        session_id=session.id, sdp=await session.offer(request.sdp, request.tracks)
    )


async def update_tracks(bridge: Bridge, session_id: str, request: TrackMapUpdate) -> None:
    await room_session(bridge, session_id).update_tracks(request.tracks)


async def delete_session(bridge: Bridge, session_id: str) -> None:
    await bridge.close_peer(room_session(bridge, session_id), "ended")
