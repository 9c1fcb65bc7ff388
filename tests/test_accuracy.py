"""Every path keeps the words the model hears: batch and post-call decoding against the plain
faster-whisper call on the same audio, live finals against offline, stable prefixes that hold.

The dev meeting (``bench.devsets``) has pauses of 0.5-15 s, a turn right after a long silence,
a long turn after a short pause near the end and a short turn at the very end: the layout
that used to lose a turn.
"""

from functools import cache
from pathlib import Path

import numpy as np
import pytest
from faster_whisper import WhisperModel

from bench.accuracy import feed, stable_violations
from bench.devsets import dev_meeting, librivox, speaker_reference
from bench.scoring import normalize, wer
from config import load_settings
from engines.base import Work
from engines.models import resolve
from engines.whisper_batch import WhisperBatch
from engines.whisper_chunked import Context, cut_repetition, looks_looped
from pipeline.call import CallSession
from pipeline.runtime import LiveRuntime
from pipeline.sink import CollectingSink
from protocol import CaptionFrame
from tests.live_helpers import count_encodes, live_engine

# one word in about 200: enough to catch a lost sentence, not one word's coin flip
SLACK = 0.005


@cache
def model_path(name: str) -> Path:
    return Path(resolve(name, load_settings().data_dir).path)


@cache
def plain(name: str) -> WhisperModel:
    return WhisperModel(str(model_path(name)), device="cpu", compute_type="int8")


@cache
def batch(name: str) -> WhisperBatch:
    return WhisperBatch(name, model_path(name), 2)


def plain_text(name: str, audio: np.ndarray) -> str:
    segments, _ = plain(name).transcribe(
        audio.astype(np.float32) / 32768, beam_size=5, vad_filter=True
    )
    return " ".join(s.text for s in segments)


def test_every_turn_of_the_mix_is_transcribed_and_never_worse_than_plain() -> None:
    """Pooled over the 3- and 4-voice mixes (314 words: the slack is one word, a lost
    sentence is ten); every turn of each mix must be heard."""
    references, ours, theirs = [], [], []
    for speakers in (3, 4):
        meeting = dev_meeting(speakers)
        result = batch("whisper-base").transcribe(meeting.mix)
        words = [w for s in result.segments for w in s.words]
        for turn in meeting.utterances:
            heard = {
                part
                for w in words
                if w.end > turn.start - 0.5 and w.start < turn.end + 0.5
                for part in normalize(w.word).split()
            }
            said = set(normalize(turn.text).split())
            lost = f"{speakers} voices: turn at {turn.start} s lost: {turn.text}"
            if len(said) >= 3:
                assert len(said & heard) >= 0.6 * len(said), lost
            else:  # a one- or two-word turn may be misheard, never skipped
                assert heard, lost
        assert result.uncovered == ()
        references.append(meeting.reference_text())
        ours.append(" ".join(s.text for s in result.segments))
        theirs.append(plain_text("whisper-base", meeting.mix))
    pooled = wer(" ".join(references), " ".join(ours)), wer(" ".join(references), " ".join(theirs))
    assert pooled[0] <= pooled[1] + SLACK, pooled


def test_each_track_is_as_good_as_the_plain_model() -> None:
    meeting = dev_meeting(3)
    for participant, track in meeting.tracks.items():
        reference = speaker_reference(meeting, participant)
        result = batch("whisper-tiny.en").transcribe(track)
        ours = wer(reference, " ".join(s.text for s in result.segments))
        theirs = wer(reference, plain_text("whisper-tiny.en", track))
        assert ours <= theirs + SLACK, (participant, ours, theirs)
        for segment in result.segments:
            assert " -" not in segment.text, segment.text  # word pieces joined


def test_a_silent_track_is_an_empty_transcript() -> None:
    rng = np.random.default_rng(1)
    result = batch("whisper-tiny.en").transcribe(
        (rng.standard_normal(16000 * 5) * 30).astype(np.int16)
    )
    assert result.segments == [] and result.uncovered == ()


async def live_finals(
    tracks: dict[str, np.ndarray], realtime: bool, tmp_path: Path
) -> tuple[dict[str, list[CaptionFrame]], list[CaptionFrame]]:
    sink = CollectingSink()
    settings = load_settings(data_dir=tmp_path)
    if not realtime:
        live = settings.live.model_copy(update={"max_load": 1.0})
        settings = settings.model_copy(update={"live": live})
    runtime = await LiveRuntime.create(settings, sink, engine=live_engine())
    try:
        call = CallSession(runtime, "dev")
        await call.start()
        streams = {name: call.add_participant(name, None, offset=0.0) for name in tracks}
        await feed(streams, tracks, realtime, step_s=0.1)
        await call.end("done")
    finally:
        await runtime.aclose()
    frames = [f for f in sink.frames if isinstance(f, CaptionFrame)]
    finals: dict[str, list[CaptionFrame]] = {name: [] for name in tracks}
    for frame in frames:
        if frame.type == "final":
            finals[frame.participant].append(frame)
    return finals, frames


async def test_live_finals_are_close_to_offline_and_stable_text_never_changes(
    tmp_path: Path,
) -> None:
    meeting = dev_meeting(3)
    finals, frames = await live_finals(meeting.tracks, realtime=False, tmp_path=tmp_path)
    assert stable_violations(frames) == []
    pooled_live, pooled_offline, references = [], [], []
    for participant, track in meeting.tracks.items():
        reference = speaker_reference(meeting, participant)
        live = " ".join(f.text for f in finals[participant])
        offline = plain_text("whisper-tiny.en", track)
        # a lost sentence of any speaker costs more than this
        assert wer(reference, live) <= wer(reference, offline) + 0.10, (participant, live)
        references.append(reference)
        pooled_live.append(live)
        pooled_offline.append(offline)
    ours = wer(" ".join(references), " ".join(pooled_live))
    theirs = wer(" ".join(references), " ".join(pooled_offline))
    assert ours <= theirs + 0.015, (ours, theirs)


async def test_live_finals_do_not_depend_on_feed_speed(tmp_path: Path) -> None:
    clips = librivox()
    gap = np.zeros(16000, np.int16)
    track = np.concatenate([part for clip in clips[:3] for part in (clip.samples, gap)])
    fast, _ = await live_finals({"reader": track}, realtime=False, tmp_path=tmp_path / "a")
    slow, frames = await live_finals({"reader": track}, realtime=True, tmp_path=tmp_path / "b")
    assert [normalize(f.text) for f in fast["reader"]] == [
        normalize(f.text) for f in slow["reader"]
    ]
    assert stable_violations(frames) == []


@pytest.mark.parametrize(
    ("words", "kept"),
    [
        (["X", "again.", "X", "again.", "X", "again.", "and"], ["X", "again."]),
        (
            [
                "I",
                "can",
                "help",
                "with",
                "the",
                "testing",
                "next",
                "week.",
                "I",
                "can",
                "help",
                "with",
                "the",
                "testing",
            ],
            ["I", "can", "help", "with", "the", "testing", "next", "week."],
        ),
        (
            ["he", "was", "not", "an", "ill", "disposed", "young", "man"],
            ["he", "was", "not", "an", "ill", "disposed", "young", "man"],
        ),
    ],
)
def test_repetition_is_cut(words: list[str], kept: list[str]) -> None:
    assert cut_repetition(words) == kept


def test_loop_signs() -> None:
    assert looks_looped("the the the the the the the the the the the the", 6.0)
    assert looks_looped("one two three four five six seven eight nine ten eleven", 1.0)
    assert not looks_looped("He was not an ill-disposed young man.", 3.0)


def test_a_decode_goes_on_from_the_committed_prefix() -> None:
    engine = live_engine()
    clip = librivox()[1]  # "he was not an ill disposed young man"
    samples = clip.samples.astype(np.float32) / 32768
    for final in (False, True):
        text, words, _ = engine.decode(samples, 0.0, "en", final=final, prefix="He was not")  # type: ignore[attr-defined]
        assert text.startswith("He was not ") and text.count("He was not") == 1, text
        assert "young man" in text.lower()
        if final:
            assert [w.word for w in words][:3] == ["He", "was", "not"]


def test_a_forced_final_reuses_the_free_decodes_encoder_output(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A final whose free decode disagrees with the committed words is decoded again from
    them: on the window the free decode encoded (the encoder is most of a final's cost),
    giving what a decode that encodes it anew gives."""
    engine = live_engine()
    clips = librivox()
    earlier = clips[0].samples.astype(np.float32) / 32768
    clip = clips[1].samples.astype(np.float32) / 32768  # "he was not an ill disposed young man"
    context = Context.keep(None, earlier, clips[0].text)
    anew = engine.decode(clip, 2.0, "en", prefix="She was not", context=context)  # type: ignore[attr-defined]
    heard = count_encodes(monkeypatch)
    stream = engine.create_stream("en")
    stream._context = context  # type: ignore[attr-defined]
    stream.accept(np.concatenate((np.zeros(32000, np.float32), clip, np.zeros(16000, np.float32))))
    stream.finish()
    stream._closed[0].committed = ["She", "was", "not"]  # type: ignore[attr-defined]
    (final,) = stream.run(Work.FINAL)
    assert final.text.startswith("She was not ") and "young man" in final.text.lower()
    assert heard == [30 * 16000]  # one encoder pass for both decodes
    text, words, _ = anew
    assert text == final.text, (text, final.text)
    assert [w.word for w in words] == [w.word for w in final.words]


def test_a_partial_hears_the_previous_finals_as_a_prompt_and_a_final_as_audio(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = live_engine()
    clips = librivox()
    earlier = clips[0].samples.astype(np.float32) / 32768
    clip = clips[1].samples.astype(np.float32) / 32768  # "he was not an ill disposed young man"
    context = Context.keep(None, earlier, clips[0].text)
    heard = count_encodes(monkeypatch)
    text, _, _ = engine.decode(clip, 0.0, "en", final=False, context=context)  # type: ignore[attr-defined]
    assert "young man" in text.lower() and "cold" not in text.lower(), text
    assert heard == [clip.size]
    heard.clear()
    text, _, _ = engine.decode(clip, 0.0, "en", final=True, context=context)  # type: ignore[attr-defined]
    assert "young man" in text.lower() and "cold" not in text.lower(), text
    assert heard == [30 * 16000]  # the context's audio, then the clip, in one padded window
    heard.clear()
    monkeypatch.setattr(engine.options, "final_window_s", 5.0)  # type: ignore[attr-defined]
    text, _, _ = engine.decode(clip, 0.0, "en", final=True, context=context)  # type: ignore[attr-defined]
    assert "young man" in text.lower() and "cold" not in text.lower(), text
    assert heard == [earlier.size + clip.size + 16000]  # what it hears and a second, not 30 s
    heard.clear()
    monkeypatch.setattr(engine.options, "partial_context_audio", True)  # type: ignore[attr-defined]
    engine.decode(clip, 0.0, "en", final=False, context=context)  # type: ignore[attr-defined]
    assert heard == [earlier.size + clip.size]


def test_two_pass_live_decodes_finals_with_the_final_model() -> None:
    from engines.factory import load_engine

    settings = load_settings()
    live = settings.live.model_copy(update={"final_model": "whisper-base"})
    engine = load_engine("whisper-tiny.en", settings.model_copy(update={"live": live}))
    assert engine.final_model is not engine.model  # type: ignore[attr-defined]
    clip = librivox()[4]
    finals = engine.transcribe(clip.samples.astype(np.float32) / 32768, "en")
    assert wer(clip.text, " ".join(f.text for f in finals)) == 0.0, finals
