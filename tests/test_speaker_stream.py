import asyncio

import numpy as np
import pytest

from bench.scoring import wer
from engines.base import InvalidAudioError
from engines.scheduler import DecodeScheduler
from pipeline.sink import CollectingSink
from pipeline.speaker_stream import Participant, SpeakerStream
from protocol import CaptionFrame, ErrorFrame
from tests.conftest import librivox_files, librivox_reference, read_wav16
from tests.live_helpers import live_engine

CHUNK = 1600  # 100 ms


async def feed(stream: SpeakerStream, samples: np.ndarray, realtime: float = 0.0) -> None:
    for begin in range(0, samples.size, CHUNK):
        stream.push(samples[begin : begin + CHUNK])
        await asyncio.sleep(realtime * CHUNK / 16000)


def captions(sink: CollectingSink) -> list[CaptionFrame]:
    return [f for f in sink.frames if isinstance(f, CaptionFrame)]


async def test_librivox_finals_partials_and_ordering(scheduler: DecodeScheduler) -> None:
    files = librivox_files()
    refs = librivox_reference()
    sink = CollectingSink()
    stream = SpeakerStream(Participant("room-1", "alice", "Alice"), live_engine(), scheduler, sink)
    silence = np.zeros(16000, np.int16)
    audio = np.concatenate([np.concatenate([read_wav16(f), silence]) for f in files])
    # a fifth of real time: fast enough for a test, slow enough for partials to appear
    await feed(stream, audio, realtime=0.2)
    await stream.close()
    frames = captions(sink)
    finals = [f for f in frames if f.type == "final"]
    reference = " ".join(refs[f.stem] for f in files)
    hypothesis = " ".join(f.text for f in finals)
    assert wer(reference, hypothesis) <= 0.08, hypothesis
    seqs = [f.seq for f in frames]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    partial_segments = {f.segment_id for f in frames if f.type == "partial"}
    assert partial_segments, "no partial frames were published"
    for final in finals:
        assert final.words, final
        for word in final.words:
            assert final.start - 0.01 <= word.start <= word.end <= final.end + 0.01
        earlier = [f for f in frames if f.segment_id == final.segment_id and f.seq < final.seq]
        if final.segment_id in partial_segments:
            assert all(f.type == "partial" for f in earlier)
            assert [f.rev for f in earlier] == list(range(len(earlier)))
            assert final.rev == len(earlier)
    assert any(final.segment_id in partial_segments for final in finals)
    assert all(f.participant == "alice" and f.name == "Alice" for f in frames)


async def test_holes_in_audio_keep_time_true(scheduler: DecodeScheduler) -> None:
    speech = read_wav16(librivox_files()[1])
    sink = CollectingSink()
    stream = SpeakerStream(Participant("r", "bob"), live_engine(), scheduler, sink, offset=5.0)
    stream.push(speech[:16000], at=0.0)
    stream.push(speech[16000:], at=4.0)  # a 3 s hole: the rest starts at stream time 4 s
    await stream.close()
    finals = [f for f in captions(sink) if f.type == "final"]
    assert finals
    assert stream.audio_seconds == pytest.approx(4.0 + (speech.size - 16000) / 16000, abs=0.01)
    last = finals[-1]
    assert last.end >= 5.0 + 4.0 + 0.5  # offset + hole position + some speech


async def test_bad_input_is_refused_and_other_streams_go_on(scheduler: DecodeScheduler) -> None:
    sink = CollectingSink()
    good = SpeakerStream(Participant("r", "good"), live_engine(), scheduler, sink)
    bad = SpeakerStream(Participant("r", "bad"), live_engine(), scheduler, sink)
    with pytest.raises(InvalidAudioError, match="expected 16000 Hz audio, got 48000 Hz"):
        bad.push(np.zeros(480, np.int16), sample_rate=48000)
    with pytest.raises(InvalidAudioError, match="expected mono audio, got 2 channels"):
        bad.push(np.zeros(480, np.int16), channels=2)
    with pytest.raises(InvalidAudioError, match="odd byte count 3"):
        bad.push(b"\x00\x01\x02")
    with pytest.raises(InvalidAudioError, match="expected mono samples"):
        bad.push(np.zeros((2, 100), np.int16))
    await bad.close()
    good.push(read_wav16(librivox_files()[4]))
    await good.close()
    texts = " ".join(
        f.text for f in captions(sink) if f.type == "final" and f.participant == "good"
    )
    assert "amiable" in texts.lower()
    assert not [f for f in sink.frames if isinstance(f, ErrorFrame)]


async def test_noise_that_opens_the_cheap_gate_never_becomes_captions(
    scheduler: DecodeScheduler,
) -> None:
    rng = np.random.default_rng(3)
    silence = np.zeros(16000, np.float32)
    burst = (rng.standard_normal(16000) * 0.3).astype(np.float32)
    hum = (0.4 * np.sin(2 * np.pi * 120 * np.arange(24000) / 16000)).astype(np.float32)
    sink = CollectingSink()
    stream = SpeakerStream(Participant("r", "typist"), live_engine(), scheduler, sink)
    stream.push(np.concatenate([silence, burst, silence, hum, silence, burst, silence]))
    await stream.close()
    assert captions(sink) == []
    assert stream._recognizer.stats.rejected_utterances >= 1
