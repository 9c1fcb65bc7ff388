"""Transcripts built in code for the post-processing tests."""

from protocol.frames import Word
from protocol.transcript import Cited, Segment, Speaker, Summary, Transcript

SECONDS_PER_CHAR = 0.06


def timed_words(text: str, start: float) -> list[Word]:
    """Words laid out at a steady speaking rate, with a short pause after each."""
    words, at = [], start
    for i, piece in enumerate(text.split()):
        length = max(0.12, len(piece) * SECONDS_PER_CHAR)
        words.append(
            Word(
                word=piece if i == 0 else f" {piece}",
                start=round(at, 3),
                end=round(at + length, 3),
                confidence=0.9,
            )
        )
        at += length + 0.08
    return words


def build(lines: list[tuple[str, str]], names: dict[str, str], gap: float = 0.6) -> Transcript:
    segments, at = [], 0.5
    for n, (speaker, text) in enumerate(lines):
        words = timed_words(text, at)
        segments.append(
            Segment(
                id=f"seg-{n:03d}",
                speaker=speaker,
                start=words[0].start,
                end=words[-1].end,
                text=text,
                words=words,
            )
        )
        at = words[-1].end + gap
    return Transcript(
        id="meeting-1",
        language="en",
        model="test",
        duration=round(at, 3),
        speakers=[Speaker(id=sid, name=name) for sid, name in names.items()],
        segments=segments,
    )


MEETING_LINES: list[tuple[str, str]] = [
    ("a", "Good morning everyone, thanks for joining the weekly planning call."),
    (
        "a",
        "Today we need to settle the database for the billing service and review the launch plan.",
    ),
    ("b", "For the database I compared Postgres and MongoDB over the last two weeks."),
    ("b", "Postgres gives us transactions, foreign keys and mature tooling for reporting queries."),
    ("c", "MongoDB would be faster to prototype, but our billing data is highly relational."),
    ("b", "The migration scripts are also simpler in Postgres because our schema is stable."),
    ("a", "Okay, so we decided to use Postgres for the billing service."),
    ("c", "Agreed, I am fine with that choice."),
    ("a", "Next topic is the marketing launch in March."),
    ("c", "The landing page copy is ready and the design team finished the screenshots."),
    ("b", "We still need pricing numbers from finance before the press release goes out."),
    ("a", "Bob, can you send the report by Friday?"),
    ("b", "Sure, I will send the finance report by Friday."),
    ("c", "I'll update the launch checklist tomorrow."),
    ("a", "Let's go with the March 14 launch date unless finance objects."),
    ("c", "One more thing about hiring: we have two open backend positions."),
    ("a", "The recruiting agency sent twelve candidates and we interviewed four of them."),
    ("b", "Two candidates did well in the system design interview."),
    ("a", "We need to schedule final interviews next week."),
    ("c", "Thanks everyone, talk to you next week."),
]

MEETING_NAMES = {"a": "Alice", "b": "Bob", "c": "Carol"}


def meeting() -> Transcript:
    return build(MEETING_LINES, MEETING_NAMES)


def assert_cites_transcript(summary: Summary, t: Transcript) -> None:
    segments = {s.id: s for s in t.segments}
    items: list[Cited] = [
        *summary.summary,
        *summary.topics,
        *summary.action_items,
        *summary.decisions,
    ]
    assert items
    for item in items:
        assert item.segment_ids, item
        cited = [
            segments[i] for i in item.segment_ids
        ]  # KeyError: cites a segment that is not there
        assert item.start <= item.end
        assert min(s.start for s in cited) - 1e-6 <= item.start
        assert item.end <= max(s.end for s in cited) + 1e-6
