import wave
from pathlib import Path

import numpy as np

from pipeline.recorder import CallRecord, CallRecorder
from protocol import CaptionFrame, Word


def test_wav_is_valid_while_the_call_is_still_running(tmp_path: Path) -> None:
    recorder = CallRecorder(tmp_path, "call-1", "room")
    track = recorder.track("a.b c*", "Ann", "en", offset=1.5)
    tone = (np.sin(np.arange(48000) / 10) * 8000).astype(np.int16)
    track.write(tone)  # 3 s: flushed every second, never closed (a crash)
    record = CallRecord.load(tmp_path / "call-1")
    path = record.audio_path(record.participants[0])
    with wave.open(str(path)) as wav:
        assert wav.getframerate() == 16000 and wav.getnchannels() == 1
        assert wav.getnframes() == 48000
        assert np.array_equal(np.frombuffer(wav.readframes(48000), np.int16), tone)
    assert record.participants[0].offset == 1.5 and record.ended_at is None
    assert "." not in path.stem and "*" not in path.stem


def test_finals_survive_a_torn_last_line_and_rejoins_get_new_files(tmp_path: Path) -> None:
    recorder = CallRecorder(tmp_path, "call-2", "room")
    recorder.track("ann", None, None, 0.0)
    recorder.track("ann", None, None, 10.0)
    frame = CaptionFrame(
        type="final", room="room", participant="ann", segment_id="s-0", rev=1, seq=1, start=0.0, end=1.0,
        text="hello", words=[Word(word="hello", start=0.1, end=0.6, confidence=0.9)], model="m",
    )  # fmt: skip
    recorder.final(frame)
    with open(tmp_path / "call-2" / "finals.jsonl", "a") as torn:
        torn.write('{"v":1,"type":"fin')
    record = recorder.close("ended")
    loaded = CallRecord.load(record.directory)
    assert [p.file for p in loaded.participants] == ["ann.wav", "ann-2.wav"]
    assert loaded.live_finals() == [frame]
    assert loaded.end_reason == "ended" and loaded.ended_at is not None
