"""A client that publishes participants' audio into a roomscribe room session over WebRTC.

One peer connection, one sendonly Opus track per participant, posted to ``/v1/sessions``
with the track map, audio sent in real time from each participant's timeline. Useful to
check a deployment end to end, and behind ``roomscribe demo``.
"""

import asyncio
import fractions
import time
from dataclasses import dataclass, field

import av
import httpx
import ifaddr
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from protocol.errors import ErrorCode
from sfu_bridge.errors import BridgeError

RATE = 16000
FRAME = 320  # 20 ms


def host_address() -> str:
    """A non-loopback IPv4 address of this machine (ICE never offers 127.0.0.1)."""
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                return ip.ip
    raise BridgeError(503, ErrorCode.NO_NETWORK, "no non-loopback IPv4 address: WebRTC needs one")


@dataclass
class Speech:
    """``samples`` (16 kHz mono int16) starting ``at`` seconds into the call."""

    at: float
    samples: np.ndarray


@dataclass
class ScriptedParticipant:
    participant: str
    name: str | None = None
    language: str | None = None
    speech: list[Speech] = field(default_factory=list)

    def duration(self) -> float:
        return max((s.at + s.samples.size / RATE for s in self.speech), default=0.0)


class TimelineTrack(MediaStreamTrack):
    """Sends a participant's timeline in real time, then silence until stopped."""

    kind = "audio"

    def __init__(self, participant: ScriptedParticipant) -> None:
        super().__init__()
        length = int(participant.duration() * RATE)
        self.audio = np.zeros(length, np.int16)
        for speech in participant.speech:
            begin = int(speech.at * RATE)
            self.audio[begin : begin + speech.samples.size] = speech.samples
        self.sent = 0
        self.finished = asyncio.Event()
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self.sent / RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        chunk = self.audio[self.sent : self.sent + FRAME]
        if chunk.size < FRAME:
            self.finished.set()
            chunk = np.concatenate([chunk, np.zeros(FRAME - chunk.size, np.int16)])
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self.sent
        frame.time_base = fractions.Fraction(1, RATE)
        self.sent += FRAME
        return frame


class RoomPublisher:
    """Publishes ``participants`` into ``room`` on the roomscribe at ``base_url``."""

    def __init__(
        self,
        base_url: str,
        room: str,
        participants: list[ScriptedParticipant],
        token: str | None = None,
        timeout_s: float = 20.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.room = room
        self.participants = participants
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout_s = timeout_s
        self.session_id: str | None = None
        self.tracks = [TimelineTrack(p) for p in participants]
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

    async def start(self) -> str:
        """Offers the tracks, applies the answer, and returns the session id."""
        transceivers = [
            self._pc.addTransceiver(track, direction="sendonly") for track in self.tracks
        ]
        await self._pc.setLocalDescription(await self._pc.createOffer())
        track_map = {
            str(t.mid): {"participant": p.participant, "name": p.name, "language": p.language}
            for t, p in zip(transceivers, self.participants, strict=True)
        }
        body = {"room": self.room, "sdp": self._pc.localDescription.sdp, "tracks": track_map}
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            reply = await client.post(
                f"{self.base_url}/v1/sessions", json=body, headers=self.headers
            )
        if reply.status_code != 200:
            raise BridgeError(reply.status_code, _code(reply), _message(reply))
        created = reply.json()
        self.session_id = str(created["session_id"])
        await self._pc.setRemoteDescription(RTCSessionDescription(created["sdp"], "answer"))
        return self.session_id

    async def wait_played(self) -> None:
        await asyncio.gather(*(track.finished.wait() for track in self.tracks))

    async def end(self) -> None:
        """Ends the session on the server (the call ends with it) and closes the peer."""
        try:
            if self.session_id is not None:
                async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                    reply = await client.delete(
                        f"{self.base_url}/v1/sessions/{self.session_id}", headers=self.headers
                    )
                self.session_id = None
                if reply.status_code not in (204, 404):
                    raise BridgeError(reply.status_code, _code(reply), _message(reply))
        finally:
            await self._pc.close()


def _code(reply: httpx.Response) -> ErrorCode:
    """The code of the service's error body, ``HTTP_ERROR`` when there is none we know."""
    try:
        code = reply.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return ErrorCode.HTTP_ERROR
    return ErrorCode(code) if code in ErrorCode.__members__ else ErrorCode.HTTP_ERROR


def _message(reply: httpx.Response) -> str:
    try:
        return str(reply.json().get("message", reply.text))
    except ValueError:
        return f"HTTP {reply.status_code}: {reply.text[:200]}"
