import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from protocol import (
    CaptionFrame,
    ErrorCode,
    ErrorFrame,
    EventFrame,
    EventType,
    Subjects,
    Word,
    decode_token,
    encode_token,
    frame_schemas,
    parse_frame,
)
from protocol.subjects import InvalidIdError

TOKEN_CHARS = re.compile(r"[A-Za-z0-9_~-]+")
AWKWARD_IDS = [
    "a.b",
    "with space",
    "*",
    ">",
    "a*",
    "~7E",
    "~",
    "é",
    "中文",
    "🎤 mic",
    "tab\there",
    "-_",
]


def caption(**changes: object) -> CaptionFrame:
    fields: dict[str, object] = {
        "type": "final",
        "room": "standup",
        "participant": "alice",
        "name": "Alice",
        "segment_id": "alice-0001",
        "rev": 3,
        "seq": 17,
        "start": 1.5,
        "end": 2.25,
        "text": "hello there",
        "words": [
            Word(word="hello", start=1.5, end=1.8, confidence=0.9),
            Word(word="there", start=1.9, end=2.25, confidence=0.8),
        ],
        "language": "en",
        "model": "whisper-tiny.en",
        "stable_chars": 11,
    }
    fields.update(changes)
    return CaptionFrame.model_validate(fields)


FRAMES = [
    caption(),
    caption(type="partial", words=[], rev=0, stable_chars=0),
    caption(type="final", text="", words=[]),
    EventFrame(
        event=EventType.PARTICIPANT_JOINED,
        room="standup",
        call_id="c1",
        participant="bob",
        at=1.7e9,
    ),
    ErrorFrame(
        code=ErrorCode.STREAM_OVERLOADED, message="too slow", room="standup", participant="bob"
    ),
]


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: f.type)
def test_frames_round_trip(frame: CaptionFrame | EventFrame | ErrorFrame) -> None:
    raw = frame.model_dump_json()
    assert json.loads(raw)["v"] == 1
    parsed = parse_frame(raw)
    assert type(parsed) is type(frame)
    assert parsed == frame
    assert parse_frame(raw.encode()) == frame


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"{}",
        b'{"type": "caption"}',
        json.dumps({**json.loads(caption().model_dump_json()), "v": 2}),
        json.dumps({**json.loads(caption().model_dump_json()), "unknown": 1}),
        json.dumps({**json.loads(caption().model_dump_json()), "seq": -1}),
        json.dumps({**json.loads(caption().model_dump_json()), "start": 3.0, "end": 2.0}),
        json.dumps({"type": "event", "event": "call.paused", "room": "r", "call_id": "c", "at": 0}),
        json.dumps({"type": "error", "message": "no code"}),
    ],
    ids=[
        "not-json",
        "empty",
        "unknown-type",
        "future-version",
        "extra-field",
        "negative-seq",
        "end-before-start",
        "unknown-event",
        "error-without-code",
    ],
)
def test_malformed_frames_raise(raw: bytes | str) -> None:
    with pytest.raises(ValidationError):
        parse_frame(raw)


def test_final_with_text_needs_words() -> None:
    with pytest.raises(ValidationError, match="must carry its words"):
        caption(words=[])
    assert caption(type="partial", words=[]).text == "hello there"


def test_frames_are_immutable() -> None:
    frame = caption()
    with pytest.raises(ValidationError):
        frame.text = "changed"  # type: ignore[misc]


@pytest.mark.parametrize("value", AWKWARD_IDS)
def test_awkward_ids_encode_to_one_safe_token(value: str) -> None:
    token = encode_token(value)
    assert TOKEN_CHARS.fullmatch(token)
    assert "." not in token and "*" not in token and ">" not in token
    assert decode_token(token) == value


@given(st.text(min_size=1, max_size=64))
def test_any_id_round_trips(value: str) -> None:
    token = encode_token(value)
    assert TOKEN_CHARS.fullmatch(token)
    assert decode_token(token) == value


@given(st.text(min_size=1, max_size=32), st.text(min_size=1, max_size=32))
def test_distinct_ids_give_distinct_tokens(a: str, b: str) -> None:
    assert (encode_token(a) == encode_token(b)) == (a == b)


def test_encoding_examples() -> None:
    assert encode_token("alice") == "alice"
    assert encode_token("a.b") == "a~2Eb"
    assert encode_token("Zoë Li") == "Zo~C3~AB~20Li"
    assert encode_token("~") == "~7E"


def test_empty_id_is_rejected_clearly() -> None:
    with pytest.raises(InvalidIdError, match=r"invalid room '': must not be empty") as info:
        Subjects().captions("", "alice")
    assert info.value.kind == "room"
    with pytest.raises(InvalidIdError, match="participant"):
        Subjects().captions("standup", "")


@pytest.mark.parametrize("token", ["", "a.b", "a b", "~", "~2", "~2e", "a*", ">", "é", "~FF"])
def test_bad_tokens_are_rejected(token: str) -> None:
    with pytest.raises(InvalidIdError):
        decode_token(token)


@pytest.mark.parametrize("room", AWKWARD_IDS)
@pytest.mark.parametrize("participant", ["alice", "a.b", ">", "中文"])
def test_caption_subjects_parse_back(room: str, participant: str) -> None:
    subjects = Subjects()
    subject = subjects.captions(room, participant)
    assert subject.startswith("roomscribe.v1.captions.")
    assert len(subject.split(".")) == 5
    assert subjects.parse_captions(subject) == (room, participant)
    assert subjects.room_captions(room) == subject.rsplit(".", 1)[0] + ".>"


def test_subjects_under_a_custom_prefix() -> None:
    subjects = Subjects("acme.captions")
    assert subjects.events("r 1") == "acme.captions.v1.events.r~201"
    assert subjects.parse_captions(subjects.captions("r", "p")) == ("r", "p")
    with pytest.raises(InvalidIdError, match="does not start with"):
        Subjects().parse_captions(subjects.captions("r", "p"))
    with pytest.raises(InvalidIdError, match="prefix"):
        Subjects("bad..prefix")
    with pytest.raises(InvalidIdError, match="prefix"):
        Subjects("wild.*")


def test_frame_schemas_cover_every_frame() -> None:
    schemas = frame_schemas()
    assert set(schemas) == {"CaptionFrame", "EventFrame", "ErrorFrame"}
    caption_props = schemas["CaptionFrame"]["properties"]
    for field in (
        "v",
        "type",
        "room",
        "participant",
        "segment_id",
        "rev",
        "seq",
        "words",
        "stable_chars",
    ):
        assert field in caption_props
    assert set(caption_props["type"]["enum"]) == {"partial", "final"}
    json.dumps(schemas)


def test_job_webhook_and_bridge_subjects_live_in_one_place() -> None:
    subjects = Subjects("acme.rs")
    assert subjects.jobs == "acme.rs.v1.jobs.>"
    assert subjects.job("postcall") == "acme.rs.v1.jobs.postcall"
    assert subjects.job_events("tr_1") == "acme.rs.v1.jobevents.tr_1"
    assert (
        subjects.webhook_delivery("tr_1.call.ended")
        == "acme.rs.v1.webhooks.deliver.tr_1.call.ended"
    )
    assert subjects.webhooks == "acme.rs.v1.webhooks.>"
    assert subjects.invite == "acme.rs.v1.invite"


def test_every_service_error_has_the_one_body() -> None:
    from protocol.errors import ErrorBody, ServiceError

    error = ServiceError(503, ErrorCode.CAPACITY, "full", {"Retry-After": "5"})
    body = ErrorBody.model_validate(error.body())
    assert (body.error.code, body.error.message, error.status) == ("CAPACITY", "full", 503)
