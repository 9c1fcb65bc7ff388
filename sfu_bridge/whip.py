"""WHIP (RFC 9725): one HTTP-signalled peer connection per participant track."""

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiortc.sdp import candidate_from_sdp
from fastapi import APIRouter, Request, Response

from protocol import ErrorCode
from protocol.errors import ServiceError
from sfu_bridge.bridge import Bridge
from sfu_bridge.errors import BridgeError
from sfu_bridge.http import check_bearer, documented, error_response, read_text
from sfu_bridge.peer import PeerSession, TrackOwner
from sfu_bridge.sdp import MediaLine

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
# the publish endpoint /whip/{room}/{participant} (never a session's URL)
ENDPOINT_PATH = re.compile(r"/whip/(?!sessions/)[^/]+/[^/]+")


class WhipSession(PeerSession):
    """The participant named in the URL is behind the offer's first sending audio mid."""

    kind = "whip"

    def __init__(self, bridge: Bridge, room: str, speaker: TrackOwner) -> None:
        super().__init__(bridge, room)
        self.speaker = speaker
        self.etag = f'"{uuid.uuid4().hex}"'

    def _audio_mid(self) -> str | None:
        return next(
            (line.mid for line in self.media.values() if line.kind == "audio" and line.sending),
            None,
        )

    def speaker_for(self, mid: str) -> TrackOwner | None:
        return self.speaker if mid == self._audio_mid() else None

    def check_offer(self, lines: list[MediaLine]) -> None:
        if not any(line.kind == "audio" and line.sending for line in lines):
            raise BridgeError(400, ErrorCode.NO_AUDIO, "the offer sends no audio track")


@dataclass
class SdpFragment:
    ufrag: str | None = None
    pwd: str | None = None
    candidates: list[tuple[str | None, str]] = field(default_factory=list)
    end_of_candidates: bool = False


def parse_sdpfrag(text: str) -> SdpFragment:
    """RFC 8840 fragment: ICE credentials, then per ``a=mid`` its candidates."""
    fragment = SdpFragment()
    mid: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("a=ice-ufrag:"):
            fragment.ufrag = line.split(":", 1)[1]
        elif line.startswith("a=ice-pwd:"):
            fragment.pwd = line.split(":", 1)[1]
        elif line.startswith("a=mid:"):
            mid = line.split(":", 1)[1]
        elif line.startswith("a=candidate:"):
            fragment.candidates.append((mid, line[len("a=") :]))
        elif line == "a=end-of-candidates":
            fragment.end_of_candidates = True
    return fragment


async def trickle(session: WhipSession, text: str) -> None:
    fragment = parse_sdpfrag(text)
    remote = session.pc.remoteDescription
    if (
        fragment.ufrag is not None
        and remote is not None
        and f"a=ice-ufrag:{fragment.ufrag}" not in remote.sdp
    ):
        raise BridgeError(
            422, ErrorCode.INVALID_REQUEST, "ICE restart is not supported; start a new session"
        )
    for mid, line in fragment.candidates:
        try:
            candidate = candidate_from_sdp(line.split(":", 1)[1])
        except (AssertionError, ValueError, IndexError) as exc:
            raise BridgeError(
                400, ErrorCode.INVALID_REQUEST, f"malformed candidate {line!r}"
            ) from exc
        candidate.sdpMid = mid or session._audio_mid()
        await session.pc.addIceCandidate(candidate)
    if fragment.end_of_candidates:
        await session.pc.addIceCandidate(None)


def whip_router(bridge: Bridge) -> APIRouter:
    """Session routes come first: ``/whip/sessions/{id}`` must not be read as a room."""
    router = APIRouter(tags=["whip"])

    @router.delete(
        "/whip/sessions/{session_id}",
        name="whip_session",
        response_model=None,
        responses=documented(401, 404),
    )
    async def stop(session_id: str, request: Request) -> Response:
        try:
            check_bearer(bridge.credentials, request)
            session = bridge.peer(session_id, WhipSession)
        except ServiceError as exc:
            return error_response(exc)
        await bridge.close_peer(session, "left")
        return Response(status_code=200)

    @router.patch(
        "/whip/sessions/{session_id}",
        status_code=204,
        response_model=None,
        responses=documented(400, 401, 404, 412, 413, 415, 422),
        openapi_extra={"requestBody": _body(SDPFRAG)},
    )
    async def patch(session_id: str, request: Request) -> Response:
        try:
            check_bearer(bridge.credentials, request)
            session = bridge.peer(session_id, WhipSession)
            assert isinstance(session, WhipSession)
            match = request.headers.get("if-match")
            if match is not None and match.strip() not in ("*", session.etag):
                raise BridgeError(
                    412,
                    ErrorCode.PRECONDITION_FAILED,
                    f"If-Match {match} is not the session's ETag",
                )
            await trickle(session, await read_text(request, SDPFRAG))
        except ServiceError as exc:
            return error_response(exc)
        return Response(status_code=204)

    @router.options(
        "/whip/sessions/{session_id}",
        status_code=204,
        response_model=None,
        responses=documented(401, 404),
    )
    async def session_options(session_id: str, request: Request) -> Response:
        try:
            check_bearer(bridge.credentials, request)
            bridge.peer(session_id, WhipSession)
        except ServiceError as exc:
            return error_response(exc)
        return Response(status_code=204, headers={"Allow": "OPTIONS, PATCH, DELETE"})

    @router.post(
        "/whip/{room}/{participant}",
        status_code=201,
        response_model=None,
        responses={
            201: {
                "description": "the SDP answer",
                "content": {SDP: {"schema": {"type": "string"}}},
            },
            **documented(400, 401, 413, 415, 422, 503),
        },
        openapi_extra={"requestBody": _body(SDP)},
    )
    async def publish(
        room: str,
        participant: str,
        request: Request,
        name: str | None = None,
        language: str | None = None,
    ) -> Response:
        session: WhipSession | None = None
        try:
            check_bearer(bridge.credentials, request)
            if bridge.runtime.admission is not None:
                bridge.runtime.admission.check("webrtc")
            offer = await read_text(request, SDP)
            session = WhipSession(bridge, room, TrackOwner(participant, name, language))
            answer = await session.accept_offer(offer)
            bridge.add_peer(session)
        except ServiceError as exc:
            if session is not None:
                await session.close("rejected")
            return error_response(exc)
        location = request.app.url_path_for("whip_session", session_id=session.id)
        return Response(
            answer,
            status_code=201,
            media_type=SDP,
            headers={"Location": str(location), "ETag": session.etag},
        )

    @router.options(
        "/whip/{room}/{participant}",
        status_code=204,
        response_model=None,
        responses=documented(401),
    )
    async def endpoint_options(room: str, participant: str, request: Request) -> Response:
        try:
            check_bearer(bridge.credentials, request)
        except ServiceError as exc:
            return error_response(exc)
        return Response(status_code=204, headers={"Allow": "OPTIONS, POST", "Accept-Post": SDP})

    return router


def _body(media_type: str) -> dict[str, Any]:
    return {"required": True, "content": {media_type: {"schema": {"type": "string"}}}}
