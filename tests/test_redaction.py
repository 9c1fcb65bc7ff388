import pytest

from engines.redaction import (
    RedactionError,
    find_pii,
    iban_valid,
    luhn_valid,
    mask_profanity,
    redact_text,
    redact_transcript,
)
from protocol.transcript import Segment, Transcript
from tests.meeting import build, timed_words


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("my card is 4111 1111 1111 1111 thanks", "my card is [CARD] thanks"),
        ("card 4111-1111-1111-1111.", "card [CARD]."),
        ("amex 378282246310005 ok", "amex [CARD] ok"),
        ("four one one one one one one one one one one one one one one one is it", "[CARD] is it"),
        ("call 555 123 4567 or (555) 123-4567", "call [PHONE] or [PHONE]"),
        ("the number is five five five one two three four", "the number is [PHONE]"),
        ("reach me on +44 20 7946 0958 today", "reach me on [PHONE] today"),
        ("write to bob.smith@example.com now", "write to [EMAIL] now"),
        ("it is bob dot smith at example dot com okay", "it is [EMAIL] okay"),
        ("mail support at acme.io please", "mail [EMAIL] please"),
        ("my ssn is 123-45-6789", "my ssn is [SSN]"),
        ("iban GB82 WEST 1234 5698 7654 32 and thanks", "iban [IBAN] and thanks"),
        ("DE89370400440532013000", "[IBAN]"),
    ],
)
def test_pii_is_masked(text: str, expected: str) -> None:
    assert redact_text(text)[0] == expected


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 fails the luhn check",
        "order 1234 5678 9012 3456 is random",
        "ssn 666-45-6789 has an invalid area",
        "ssn 900-12-3456 too",
        "ssn 123-00-6789 has group zero",
        "iban GB82 WEST 1234 5698 7654 33 has a wrong check digit",
        "we sold 1500 units in 2023 and 12 more in 2024",
        "version 1.2.3 ships on 3 4",
        "look at the dot com boom",
        "one or two people",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact_text(text) == (text, [])


def test_validators() -> None:
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")
    assert iban_valid("GB82 WEST 1234 5698 7654 32")
    assert not iban_valid("GB82 WEST 1234 5698 7654 33")
    assert not iban_valid("GB82")


def test_findings_point_into_the_original_text() -> None:
    text = "Card 4111 1111 1111 1111, mail a@b.co"
    findings = find_pii(text)
    assert [(f.kind, text[f.start : f.end]) for f in findings] == [
        ("card", "4111 1111 1111 1111"),
        ("email", "a@b.co"),
    ]


def test_only_requested_kinds_are_masked() -> None:
    text = "card 4111 1111 1111 1111 mail a@b.co"
    assert redact_text(text, ["email"])[0] == "card 4111 1111 1111 1111 mail [EMAIL]"
    with pytest.raises(RedactionError, match="passport"):
        redact_text(text, ["passport"])  # type: ignore[list-item]


def test_transcript_words_and_text_are_masked_together() -> None:
    t = build(
        [
            ("a", "My card number is 4111 1111 1111 1111, thanks."),
            ("b", "Send it to bob dot smith at example dot com please."),
            ("a", "Nothing private here."),
        ],
        {"a": "Alice", "b": "Bob"},
    )
    r = redact_transcript(t, ["card", "email"])
    assert r.redacted == ["card", "email"]
    card, email, plain = r.segments
    assert card.text == "My card number is [CARD], thanks."
    assert [w.word.strip() for w in card.words] == [
        "My",
        "card",
        "number",
        "is",
        "[CARD],",
        "thanks.",
    ]
    masked = card.words[4]
    original = t.segments[0].words
    assert (masked.start, masked.end) == (original[4].start, original[7].end)
    assert email.text == "Send it to [EMAIL] please."
    assert [w.word.strip() for w in email.words] == ["Send", "it", "to", "[EMAIL]", "please."]
    assert plain == t.segments[2]
    # nothing of the numbers or the address survives anywhere
    dumped = r.model_dump_json()
    assert "4111" not in dumped and "smith" not in dumped
    assert t.segments[0].text.endswith("1111, thanks.")


def test_word_that_does_not_match_the_text_is_redacted_on_its_own() -> None:
    words = timed_words("mail a@b.co now", 0.0)
    t = Transcript(
        id="x",
        model="m",
        duration=3.0,
        segments=[
            Segment(id="1", speaker="s", start=0.0, end=3.0, text="(text edited)", words=words)
        ],
    )
    r = redact_transcript(t, ["email"])
    assert [w.word.strip() for w in r.segments[0].words] == ["mail", "[EMAIL]", "now"]


def test_profanity_is_masked_keeping_the_first_letter() -> None:
    assert mask_profanity("What the fuck, this is bullshit. Shit happens, Scunthorpe.") == (
        "What the f***, this is b*******. S*** happens, Scunthorpe."
    )


def test_transcript_profanity_is_masked_in_text_and_words() -> None:
    t = build([("a", "This shitty build failed again, call 555 123 4567.")], {"a": "Alice"})
    r = redact_transcript(t, ["phone"], profanity=True)
    assert r.redacted == ["phone", "profanity"]
    segment = r.segments[0]
    assert segment.text == "This s***** build failed again, call [PHONE]."
    assert " ".join(w.word.strip() for w in segment.words) == segment.text
    assert redact_transcript(t, ["phone"]).segments[0].text.startswith("This shitty")
