"""roomscribe's ``WS /v1/listen`` as this plugin speaks it: the URL, the start message, the
caption frames as LiveKit ``SpeechData`` and the server's refusals as ``APIError``\\s. Pure.

The protocol (roomscribe's PROTOCOL.md, "WebSocket /v1/listen"): the client sends a JSON
``start``, binary s16le PCM, then ``{"type": "end"}``; the server answers ``ready``, then
``partial`` / ``final`` caption frames, then ``completed`` and closes. A refusal is an
``error`` frame without a participant, followed by a close.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from livekit.agents import APIConnectionError, APIError, APIStatusError, LanguageCode, stt
from livekit.agents.types import TimedString

SAMPLE_RATE = 16_000
END_MESSAGE = json.dumps({"type": "end"})

# error code -> (HTTP-like status for APIStatusError, retryable)
_REFUSALS: dict[str, tuple[int, bool]] = {
    "UNAUTHORIZED": (401, False),
    "CAPACITY": (503, True),
    "PROTOCOL": (400, False),
    "INVALID_CONFIG": (400, False),
    "INVALID_REQUEST": (400, False),
    "MODEL_NOT_FOUND": (400, False),
    "INTERNAL": (500, True),
}

# close codes of a session that ended on the server's side while the client still streams:
# 4002 maximum duration, 4003 no audio for the idle timeout
SESSION_LIMIT_CLOSES = (4002, 4003)


def listen_url(base_url: str) -> str:
    """``http(s)://host[:port][/prefix]`` or ``ws(s)://...`` -> ``ws(s)://.../v1/listen``."""
    parts = urlsplit(base_url)
    schemes = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
    if parts.scheme not in schemes or not parts.netloc:
        raise ValueError(
            f"base_url must be an http(s):// or ws(s):// address of a roomscribe server, "
            f"not {base_url!r}"
        )
    path = parts.path.rstrip("/")
    if not path.endswith("/v1/listen"):
        path += "/v1/listen"
    return urlunsplit((schemes[parts.scheme], parts.netloc, path, parts.query, ""))


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def start_message(
    *,
    language: str | None,
    interim_results: bool,
    room: str | None = None,
    participant: str | None = None,
    name: str | None = None,
) -> str:
    message: dict[str, Any] = {
        "type": "start",
        "sample_rate": SAMPLE_RATE,
        "channels": 1,
        "encoding": "pcm_s16le",
        "interim_results": interim_results,
    }
    optional = {"language": language, "room": room, "participant": participant, "name": name}
    message.update({key: value for key, value in optional.items() if value is not None})
    return json.dumps(message)


def refusal(frame: dict[str, Any]) -> APIError:
    """The exception for a session-ending ``error`` frame."""
    code = str(frame.get("code", "INTERNAL"))
    message = f"roomscribe refused the stream: {code}: {frame.get('message', '')}"
    status, retryable = _REFUSALS.get(code, (500, True))
    return APIStatusError(message, status_code=status, body=frame, retryable=retryable)


def closed_early(close_code: int | None) -> APIError:
    """The server closed the socket before ``completed`` and without an error frame."""
    return APIConnectionError(
        f"roomscribe closed the stream before it completed (close code {close_code})"
    )


def informs(frame: dict[str, Any]) -> bool:
    """An error frame that names a participant (e.g. ``STREAM_OVERLOADED``) only informs."""
    return frame.get("type") == "error" and frame.get("participant") is not None


@dataclass(frozen=True)
class Caption:
    """One ``partial`` or ``final`` caption frame."""

    final: bool
    segment_id: str
    text: str
    start: float
    end: float
    language: str | None
    model: str | None
    words: tuple[tuple[str, float, float, float], ...]

    @classmethod
    def parse(cls, frame: dict[str, Any]) -> Caption:
        return cls(
            final=frame["type"] == "final",
            segment_id=str(frame["segment_id"]),
            text=str(frame["text"]).strip(),
            start=float(frame["start"]),
            end=float(frame["end"]),
            language=frame.get("language"),
            model=frame.get("model"),
            words=tuple(
                (str(w["word"]), float(w["start"]), float(w["end"]), float(w["confidence"]))
                for w in frame.get("words") or ()
            ),
        )

    @property
    def confidence(self) -> float:
        """Mean word confidence; 0 when the frame carries no words (an early partial)."""
        if not self.words:
            return 0.0
        return sum(w[3] for w in self.words) / len(self.words)

    def speech_data(self, offset: float, language: str | None) -> stt.SpeechData:
        """As LiveKit ``SpeechData``, times shifted by ``offset`` seconds of stream time."""
        return stt.SpeechData(
            language=LanguageCode(self.language or language or "und"),
            text=self.text,
            start_time=self.start + offset,
            end_time=self.end + offset,
            confidence=self.confidence,
            words=[
                TimedString(
                    word.strip(),
                    start_time=start + offset,
                    end_time=end + offset,
                    confidence=confidence,
                    start_time_offset=offset,
                )
                for word, start, end, confidence in self.words
            ],
        )


def joined(captions: list[Caption], offset: float, language: str | None) -> stt.SpeechData:
    """Several finals as one utterance (what ``recognize`` returns)."""
    spoken = [c for c in captions if c.text]
    words = tuple(w for c in spoken for w in c.words)
    merged = Caption(
        final=True,
        segment_id=spoken[0].segment_id if spoken else "",
        text=" ".join(c.text for c in spoken),
        start=spoken[0].start if spoken else 0.0,
        end=spoken[-1].end if spoken else 0.0,
        language=next((c.language for c in spoken if c.language), None),
        model=next((c.model for c in spoken if c.model), None),
        words=words,
    )
    return merged.speech_data(offset, language)
