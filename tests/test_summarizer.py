from engines.summarizer import split_sentences, summarize
from protocol.transcript import Summary, Transcript
from tests.meeting import assert_cites_transcript, build, meeting


def test_meeting_summary_finds_actions_decisions_and_topics() -> None:
    t = meeting()
    s = summarize(t)
    assert s.generator == "embedded"
    assert s.fallback_reason is None
    assert_cites_transcript(s, t)

    report = next(a for a in s.action_items if "report" in a.text)
    assert report.owner == "Bob"
    assert report.due == "Friday"
    # the request and Bob's "I will send ..." reply are one item citing both
    assert report.segment_ids == ["seg-011", "seg-012"]
    assert sum("report" in a.text for a in s.action_items) == 1
    checklist = next(a for a in s.action_items if "checklist" in a.text)
    assert (checklist.owner, checklist.due) == ("Carol", "tomorrow")
    interviews = next(a for a in s.action_items if "interviews" in a.text)
    assert (interviews.owner, interviews.due) == (None, "next week")

    decisions = [d.text for d in s.decisions]
    assert any("decided to use Postgres" in d for d in decisions)
    assert any("March 14 launch" in d for d in decisions)
    assert not any("Agreed, I am fine" in d for d in decisions)
    postgres = next(d for d in s.decisions if "Postgres" in d.text)
    assert postgres.segment_ids == ["seg-006"]

    # three conversations: the database, the launch, hiring
    assert [t.segment_ids[0] for t in s.topics] == ["seg-000", "seg-008", "seg-015"]
    assert "Postgres" in s.topics[0].text
    assert "candidates" in s.topics[2].text

    assert 1 <= len(s.summary) <= 5
    starts = [item.start for item in s.summary]
    assert starts == sorted(starts)
    assert any("Postgres" in item.text for item in s.summary)
    assert not any("Thanks everyone" in item.text for item in s.summary)


def test_requests_without_a_name_go_to_the_speaker_who_takes_them() -> None:
    t = build(
        [
            ("a", "Can you hear me?"),
            ("b", "Yes, loud and clear."),
            ("a", "Could you please book the meeting room for Thursday?"),
            ("b", "Sure, no problem."),
            ("b", "Dana will draft the contract by June 3rd."),
            ("a", "I think that is fine."),
        ],
        {"a": "Alice", "b": "Bob", "d": "Dana"},
    )
    items = summarize(t).action_items
    assert [(a.text, a.owner, a.due) for a in items] == [
        ("Book the meeting room for Thursday", "Bob", None),
        ("Draft the contract by June 3rd", "Dana", "June 3rd"),
    ]


def test_sentences_get_their_own_times_and_segments_without_words_still_work() -> None:
    t = meeting()
    sentences = split_sentences(t)
    assert len(sentences) == len(t.segments)
    two = build([("a", "First sentence here. Second one follows.")], {"a": "Alice"})
    first, second = split_sentences(two)
    assert first.text == "First sentence here." and second.text == "Second one follows."
    assert first.end < second.start
    bare = two.model_copy(update={"segments": [two.segments[0].model_copy(update={"words": []})]})
    first, second = split_sentences(bare)
    assert (
        bare.segments[0].start
        == first.start
        < first.end
        <= second.start
        < second.end
        == bare.segments[0].end
    )


def test_empty_transcript_gives_an_empty_summary() -> None:
    s = summarize(Transcript(id="e", model="m", duration=0.0))
    assert s == Summary(generator="embedded")
