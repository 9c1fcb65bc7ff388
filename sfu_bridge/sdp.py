"""What the bridge reads from an offer before handing it to aiortc (mids, kinds, who sends),
and what it adds to aiortc's answer (Opus DTX)."""

import re
from dataclasses import dataclass

from aiortc import sdp as aiortc_sdp

from protocol import ErrorCode
from sfu_bridge.errors import BridgeError


@dataclass(frozen=True)
class MediaLine:
    mid: str
    kind: str
    sending: bool
    stream_id: str | None


def parse_offer(text: str) -> list[MediaLine]:
    """The offer's media lines; :class:`BridgeError` 400 ``INVALID_REQUEST`` if it is not SDP."""
    if not text.lstrip().startswith("v=0"):
        raise BridgeError(
            400, ErrorCode.INVALID_REQUEST, "body is not an SDP offer (must start with v=0)"
        )
    try:  # aiortc's parser reports some malformed lines with assert
        description = aiortc_sdp.SessionDescription.parse(text)
    except (AssertionError, AttributeError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise BridgeError(
            400, ErrorCode.INVALID_REQUEST, f"malformed SDP: {exc or 'a line does not parse'}"
        ) from exc
    lines = []
    for index, media in enumerate(description.media):
        if media.kind not in ("audio", "video"):
            continue
        if not media.rtp.muxId:
            raise BridgeError(400, ErrorCode.INVALID_REQUEST, f"media line {index} has no a=mid")
        stream_id = media.msid.split()[0] if media.msid else None
        sending = media.port != 0 and (media.direction or "sendrecv") in ("sendrecv", "sendonly")
        lines.append(
            MediaLine(media.rtp.muxId, media.kind, sending, None if stream_id == "-" else stream_id)
        )
    if not lines:
        raise BridgeError(
            400, ErrorCode.INVALID_REQUEST, "SDP offer has no audio or video media line"
        )
    return lines


_OPUS_RTPMAP = re.compile(r"^a=rtpmap:(\d+) opus/48000(?:/\d+)?$", re.IGNORECASE)


def with_opus_dtx(answer: str) -> str:
    """``usedtx=1`` on every Opus payload of an answer: a sender that supports DTX then sends
    a packet every 400 ms in silence instead of one every 20 ms (RFC 7587, 3.1.3).

    The fmtp of an answer states what its author wants to receive, so this changes only what
    the remote peer sends; the holes it leaves are audio time the track feed fills as silence.
    """
    newline = "\r\n" if "\r\n" in answer else "\n"
    lines = answer.split(newline)
    opus = {m.group(1): i for i, line in enumerate(lines) if (m := _OPUS_RTPMAP.match(line))}
    for payload, at in sorted(opus.items(), key=lambda item: -item[1]):
        prefix = f"a=fmtp:{payload} "
        fmtp = next((i for i, line in enumerate(lines) if line.startswith(prefix)), None)
        if fmtp is None:
            lines.insert(at + 1, f"{prefix}usedtx=1")
        elif "usedtx=" not in lines[fmtp]:
            lines[fmtp] += ";usedtx=1"
    return newline.join(lines)
