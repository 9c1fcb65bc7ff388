"""The generated meeting behind `roomscribe bench batch` and its scoring helpers."""

import numpy as np

from bench.batch import _diarizer, bench_batch, speaker_accuracy, wav_bytes, write_call
from bench.meeting import VOICES, build_meeting, dialogue, spell_numbers
from bench.scoring import diarization_error_rate
from config import load_settings
from engines.diarization_export import prepare_diarization
from engines.whisper_batch import WhisperModels
from pipeline.audio_io import SAMPLE_RATE, decode_file
from pipeline.recorder import CallRecord
from tests.pyannote_sample import cache_root


def test_dialogue_is_seeded_and_never_repeats_a_speaker() -> None:
    lines = dialogue(40)
    assert lines == dialogue(40)
    assert lines != dialogue(40, seed=12)
    assert len(lines) == 40
    assert all(a.voice != b.voice for a, b in zip(lines, lines[1:], strict=False))
    assert {line.voice for line in lines} == set(VOICES)


def test_spell_numbers_matches_the_scripts_wording() -> None:
    assert " ".join(spell_numbers("We spent $40,000, 15% less").split()) == (
        "We spent forty thousand dollars, fifteen percent less"
    )
    assert " ".join(spell_numbers("closed 12 tickets in 3 days").split()) == (
        "closed twelve tickets in three days"
    )


def test_meeting_tracks_sum_to_the_mix_and_turns_hold_speech(tmp_path) -> None:
    meeting = build_meeting(0.25)
    assert 12.0 <= meeting.duration <= 40.0
    total = meeting.mix.size
    assert abs(total / SAMPLE_RATE - meeting.duration) < 0.01
    summed = np.sum([t.astype(np.int32) for t in meeting.tracks.values()], axis=0)
    assert all(t.size == total for t in meeting.tracks.values())
    assert np.array_equal(np.clip(summed, -32768, 32767), meeting.mix)
    first = meeting.utterances[0]
    track = meeting.tracks[first.participant]
    inside = track[int(first.start * SAMPLE_RATE) : int(first.end * SAMPLE_RATE)]
    before = track[: int(first.start * SAMPLE_RATE)]
    assert np.abs(inside).max() > 3000 > np.abs(before).max()
    call = write_call(meeting, tmp_path, "c1")
    loaded = CallRecord.load(call.directory)
    assert [p.participant for p in loaded.participants] == [v.participant for v in VOICES]
    back = decode_file(loaded.audio_path(loaded.participants[0]))
    assert np.array_equal(back, meeting.tracks[VOICES[0].participant])
    assert wav_bytes(meeting.mix)[:4] == b"RIFF"


def test_speaker_accuracy_maps_labels_one_to_one() -> None:
    meeting = build_meeting(0.25)
    words = [((u.start + u.end) / 2, u.participant) for u in meeting.utterances]
    assert speaker_accuracy(meeting, words) == 1.0
    relabel = {v.participant: f"S{i}" for i, v in enumerate(VOICES)}
    assert speaker_accuracy(meeting, [(t, relabel[s]) for t, s in words]) == 1.0
    assert speaker_accuracy(meeting, [(t, "S1") for t, _ in words]) < 1.0


def test_diarization_error_rate() -> None:
    ref = [(0.0, 2.0, "a"), (2.0, 4.0, "b")]
    assert diarization_error_rate(ref, [(0.0, 2.0, "x"), (2.0, 4.0, "y")]) == 0.0
    assert diarization_error_rate(ref, [(0.0, 4.0, "x")]) == 0.5


async def test_the_diarized_batch_row_runs_the_job_as_the_service_does(tmp_path) -> None:
    """The bench's stand-in store takes what a diarized batch job stores beside its result."""
    meeting = build_meeting(0.25)
    settings = load_settings(data_dir=tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "diarization").symlink_to(
        prepare_diarization(cache_root() / "diarization-models")
    )
    row = await bench_batch(
        meeting,
        settings,
        WhisperModels(tmp_path),
        _diarizer(settings),
        None,
        model="whisper-tiny.en",
    )
    assert row["speakers_found"] == len(VOICES) and row["der"] is not None
    assert row["wer"] < 0.2, row
