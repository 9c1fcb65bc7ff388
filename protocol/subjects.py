"""NATS subject names.

Room and participant ids become single subject tokens. Bytes outside ``[A-Za-z0-9_-]`` are
written as ``~`` followed by two upper-case hex digits of their UTF-8 encoding, so dots,
spaces, ``*``, ``>`` and non-ASCII can never split or widen a subject, and
:func:`decode_token` gives the id back exactly.
"""

import re
from dataclasses import dataclass

_SAFE = re.compile(r"[A-Za-z0-9_-]")
_ESCAPED = re.compile(r"~([0-9A-F]{2})")
_TOKEN = re.compile(r"(?:[A-Za-z0-9_-]|~[0-9A-F]{2})+")


class InvalidIdError(ValueError):
    def __init__(self, kind: str, value: str, reason: str) -> None:
        super().__init__(f"invalid {kind} {value!r}: {reason}")
        self.kind = kind
        self.value = value


def encode_token(value: str, kind: str = "id") -> str:
    if not value:
        raise InvalidIdError(kind, value, "must not be empty")
    if len(value) > 256:
        raise InvalidIdError(kind, value, "longer than 256 characters")
    out: list[str] = []
    for char in value:
        if _SAFE.fullmatch(char):
            out.append(char)
        else:
            out.extend(f"~{byte:02X}" for byte in char.encode("utf-8"))
    return "".join(out)


def decode_token(token: str) -> str:
    if not _TOKEN.fullmatch(token):
        raise InvalidIdError("token", token, "not an encoded subject token")
    raw = bytearray()
    pos = 0
    for match in _ESCAPED.finditer(token):
        raw += token[pos : match.start()].encode("ascii")
        raw.append(int(match.group(1), 16))
        pos = match.end()
    raw += token[pos:].encode("ascii")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidIdError("token", token, f"escapes are not UTF-8 ({exc.reason})") from None


@dataclass(frozen=True)
class Subjects:
    """Builds and parses the subjects under one prefix (default ``roomscribe``)."""

    prefix: str = "roomscribe"

    def __post_init__(self) -> None:
        if not self.prefix or any(
            part == "" or not _TOKEN.fullmatch(part) for part in self.prefix.split(".")
        ):
            raise InvalidIdError(
                "prefix", self.prefix, "must be dot-separated [A-Za-z0-9_-] tokens"
            )

    def captions(self, room: str, participant: str) -> str:
        return f"{self.prefix}.v1.captions.{encode_token(room, 'room')}.{encode_token(participant, 'participant')}"

    def room_captions(self, room: str) -> str:
        """Wildcard subject for every participant's captions in one room."""
        return f"{self.prefix}.v1.captions.{encode_token(room, 'room')}.>"

    def events(self, room: str) -> str:
        return f"{self.prefix}.v1.events.{encode_token(room, 'room')}"

    @property
    def all_events(self) -> str:
        return f"{self.prefix}.v1.events.*"

    @property
    def invite(self) -> str:
        return f"{self.prefix}.v1.invite"

    @property
    def jobs(self) -> str:
        """Every job of the work-queue stream ``<BASE>_JOBS``."""
        return f"{self.prefix}.v1.jobs.>"

    def job(self, kind: str) -> str:
        """Where a job of ``kind`` is queued (body ``{"id": <job id>}``)."""
        return f"{self.prefix}.v1.jobs.{kind}"

    def job_events(self, job_id: str) -> str:
        """A job's webhook events (body = the webhook body)."""
        return f"{self.prefix}.v1.jobevents.{job_id}"

    @property
    def webhooks(self) -> str:
        """Every subject of the webhook delivery stream ``<BASE>_WEBHOOKS``."""
        return f"{self.prefix}.v1.webhooks.>"

    @property
    def webhook_deliveries(self) -> str:
        return f"{self.prefix}.v1.webhooks.deliver.>"

    def webhook_delivery(self, key: str) -> str:
        return f"{self.prefix}.v1.webhooks.deliver.{key}"

    def session(self, session_id: str, verb: str) -> str:
        return f"{self.prefix}.v1.sessions.{encode_token(session_id, 'session')}.{verb}"

    def parse_captions(self, subject: str) -> tuple[str, str]:
        """Room and participant ids of a caption subject."""
        head = f"{self.prefix}.v1.captions."
        if not subject.startswith(head):
            raise InvalidIdError("subject", subject, f"does not start with {head!r}")
        parts = subject[len(head) :].split(".")
        if len(parts) != 2:
            raise InvalidIdError("subject", subject, "expected <room>.<participant>")
        return decode_token(parts[0]), decode_token(parts[1])
