import json
from datetime import timedelta

import pytest
import srt
import webvtt

from pipeline.exports import MAX_LINE_CHARS, ExportError, render, to_srt, to_txt, to_vtt
from protocol.transcript import Segment, Speaker, Transcript
from tests.meeting import meeting, timed_words

LONG = (
    "So the plan for the next quarter is to move every billing job to the new queue, "
    "retire the old cron machines, document the failure modes we saw in January, and "
    "make sure that on-call engineers know which dashboards to open first."
)


def _tricky() -> Transcript:
    long_words = timed_words(LONG, 2.0)
    yes_words = timed_words("Yes.", long_words[-1].end + 0.2)
    overlap_start = yes_words[-1].end + 0.05
    a = timed_words("I think the queue can take it.", overlap_start)
    b = timed_words("Wait, what about retries?", overlap_start)
    url = timed_words(
        "Docs are at https://example.com/a/very/long/path/to/the/runbook/page today.", 40.0
    )
    return Transcript(
        id="t",
        model="test",
        duration=60.0,
        speakers=[Speaker(id="s1", name="Alice"), Speaker(id="s2", name="Bob"), Speaker(id="s3")],
        segments=[
            Segment(
                id="long",
                speaker="s1",
                start=2.0,
                end=long_words[-1].end,
                text=LONG,
                words=long_words,
            ),
            Segment(
                id="yes",
                speaker="s2",
                start=yes_words[0].start,
                end=yes_words[-1].end,
                text="Yes.",
                words=yes_words,
            ),
            Segment(
                id="ov-a",
                speaker="s1",
                start=a[0].start,
                end=a[-1].end,
                text="I think the queue can take it.",
                words=a,
            ),
            Segment(
                id="ov-b",
                speaker="s2",
                start=b[0].start,
                end=b[-1].end,
                text="Wait, what about retries?",
                words=b,
            ),
            Segment(id="nowords", speaker="s3", start=30.0, end=38.0, text=LONG[:150]),
            Segment(
                id="url", speaker="s1", start=url[0].start, end=url[-1].end, text="", words=url
            ),
        ],
    )


def _check_timing(cues: list[tuple[float, float]], duration: float) -> None:
    assert cues
    for (start, end), nxt in zip(cues, [*cues[1:], None], strict=True):
        assert end - start >= 1.0 - 1e-9, (start, end)
        assert end - start <= 7.0 + 1e-9, (start, end)
        if nxt is not None:
            assert nxt[0] >= start
            assert nxt[0] >= end - 1e-9, f"cue {start}-{end} overlaps next at {nxt[0]}"
    assert cues[-1][1] <= duration + 7.0


@pytest.mark.parametrize("build", [meeting, _tricky])
def test_srt_follows_caption_conventions(build) -> None:
    t = build()
    subs = list(srt.parse(render(t, "srt")))
    assert [s.index for s in subs] == list(range(1, len(subs) + 1))
    for sub in subs:
        lines = sub.content.split("\n")
        assert 1 <= len(lines) <= 2
        assert all(0 < len(line) <= MAX_LINE_CHARS for line in lines), lines
    _check_timing([(s.start.total_seconds(), s.end.total_seconds()) for s in subs], t.duration)
    spoken = " ".join(s.content.replace("\n", " ") for s in subs)
    for name in ("Alice:", "Bob:"):
        assert name in spoken
    labels = {f"{t.speaker_name(s.speaker)}:" for s in t.segments}
    glued = "".join(w for w in spoken.split() if w not in labels)
    for seg in t.segments:
        assert "".join((seg.text or "".join(w.word for w in seg.words)).split()) in glued


@pytest.mark.parametrize("build", [meeting, _tricky])
def test_vtt_follows_caption_conventions(build) -> None:
    t = build()
    text = to_vtt(t)
    assert text.startswith("WEBVTT\n\n")
    captions = webvtt.from_string(text).captions
    for caption in captions:
        lines = caption.text.split("\n")
        assert 1 <= len(lines) <= 2
        assert all(0 < len(line) <= MAX_LINE_CHARS for line in lines), lines
        assert caption.voice in {"Alice", "Bob", "Carol", "s3"}
    _check_timing(
        [
            (
                c.start_in_seconds + int(c.start.split(".")[1]) / 1000,
                c.end_in_seconds + int(c.end.split(".")[1]) / 1000,
            )
            for c in captions
        ],
        t.duration,
    )
    voices = [c.voice for c in captions]
    assert voices[0] == "Alice"
    assert set(voices) >= {"Alice", "Bob"}


def test_cue_times_come_from_word_timestamps() -> None:
    t = _tricky()
    subs = list(srt.parse(to_srt(t)))
    first = subs[0]
    assert first.start == timedelta(seconds=2.0)
    long_words = t.segments[0].words
    # the long segment spans several cues, each ending on one of its words (or extended to 1 s)
    ends = {round(w.end, 3) for w in long_words}
    inner = [s for s in subs if s.end.total_seconds() < long_words[-1].end]
    assert len(inner) >= 2
    for sub in inner:
        assert round(sub.end.total_seconds(), 3) in ends or (sub.end - sub.start) == timedelta(
            seconds=1
        )


def test_short_cue_is_extended_and_overlap_is_resolved() -> None:
    t = _tricky()
    subs = list(srt.parse(to_srt(t)))
    # a segment's last word is not left alone in a cue of its own
    assert all(len(s.content.split()) > 1 for s in subs if s.content != "Bob: Yes.")
    yes = next(s for s in subs if "Yes." in s.content)
    assert (yes.end - yes.start).total_seconds() == pytest.approx(1.0)
    a = next(s for s in subs if "queue can" in s.content)
    b = next(s for s in subs if "retries" in s.content)
    assert a.end <= b.start or b.end <= a.start


def test_segment_without_words_is_split_proportionally() -> None:
    t = _tricky()
    subs = [s for s in srt.parse(to_srt(t)) if 30.0 <= s.start.total_seconds() < 38.0]
    assert len(subs) >= 2
    assert subs[0].start == timedelta(seconds=30)
    assert "s3:" in subs[0].content
    assert subs[-1].end.total_seconds() == pytest.approx(38.0, abs=0.01)


def test_time_format_is_exact() -> None:
    t = Transcript(
        id="x",
        model="m",
        duration=4000.0,
        segments=[Segment(id="1", speaker="s", start=3722.345, end=3724.5, text="Hello there.")],
    )
    assert "01:02:02,345 --> 01:02:04,500" in to_srt(t)
    assert "01:02:02.345 --> 01:02:04.500" in to_vtt(t)
    assert to_txt(t) == "[01:02:02] s: Hello there.\n"


def test_txt_has_one_line_per_segment() -> None:
    t = meeting()
    lines = to_txt(t).splitlines()
    assert len(lines) == len(t.segments)
    assert (
        lines[0]
        == "[00:00:00] Alice: Good morning everyone, thanks for joining the weekly planning call."
    )
    assert lines[11].endswith("Alice: Bob, can you send the report by Friday?")


def test_json_round_trips() -> None:
    t = meeting()
    data = json.loads(render(t, "json"))
    assert {"segments", "speakers", "summary"} <= set(data)
    assert data["segments"][0]["words"][0]["word"] == "Good"
    assert Transcript.model_validate(data) == t


def test_empty_transcript_and_unknown_format() -> None:
    empty = Transcript(id="e", model="m", duration=0.0)
    assert render(empty, "srt") == ""
    assert list(webvtt.from_string(render(empty, "vtt")).captions) == []
    assert render(empty, "txt") == ""
    with pytest.raises(ExportError) as err:
        render(empty, "docx")  # type: ignore[arg-type]
    assert err.value.code == "UNSUPPORTED_FORMAT"
    assert "docx" in str(err.value)
