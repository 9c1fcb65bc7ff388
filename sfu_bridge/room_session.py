"""Room sessions: one peer connection per room carrying many participants' tracks.

The ``tracks`` map (mid -> participant) is authoritative; a sending mid it does not name falls
back to the msid stream id of its media line. aiortc track ids and SSRCs are never used.
"""

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from pipeline.url_fetch import DownloadError, resolve
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


IceUrl = Annotated[str, Field(pattern=r"^(stun|turn|turns):[^\s]{1,500}$")]


class IceServer(_Body):
    urls: IceUrl | list[IceUrl] = Field(min_length=1)
    username: str | None = Field(default=None, max_length=512)
    credential: str | None = Field(default=None, max_length=512)


class CreateSession(_Body):
    room: str = Field(min_length=1, max_length=256)
    sdp: str
    tracks: dict[str, TrackInfo] = Field(default_factory=dict)
    ice_servers: list[IceServer] | None = Field(default=None, max_length=8)


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


def _ice_host(url: str) -> tuple[str, int]:
    """``stun:host:port`` / ``turn:[v6]:port?transport=udp`` -> (host, port)."""
    scheme, _, rest = url.partition(":")
    where = rest.split("?", 1)[0]
    if where.startswith("["):
        host, _, port = where[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = where.partition(":")
    default = 5349 if scheme == "turns" else 3478
    return host, int(port) if port.isdigit() else default


async def check_ice_servers(bridge: Bridge, servers: list[IceServer]) -> None:
    """A caller's STUN/TURN servers pass the outbound guard like any other URL."""
    allow_private = bridge.runtime.settings.api.allow_private_urls
    for server in servers:
        for url in [server.urls] if isinstance(server.urls, str) else server.urls:
            host, port = _ice_host(url)
            try:
                await resolve(host, port, allow_private)
            except DownloadError as exc:
                raise BridgeError(400, exc.code, f"ice_servers: {exc.message}") from exc


async def create_session(bridge: Bridge, request: CreateSession) -> SessionAnswer:
    if bridge.runtime.admission is not None:
        bridge.runtime.admission.check("webrtc")
    servers = request.ice_servers
    if servers:
        await check_ice_servers(bridge, servers)
    ice = None if servers is None else [server.model_dump(exclude_none=True) for server in servers]
    session = RoomSession(bridge, request.room, ice)
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
