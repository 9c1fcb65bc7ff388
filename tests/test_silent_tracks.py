"""Silent tracks stay cheap: Opus frames resampled in batches with the same samples and times,
and DTX gaps (zeros) neither cost webrtcvad calls nor look like speech onsets."""

import fractions
from pathlib import Path

import av
import numpy as np

from bench.devsets import dev_meeting, librivox
from engines.base import SAMPLE_RATE
from engines.scheduler import DecodeScheduler
from engines.vad import FRAME, SpeechGate, VadConfig, pcm16
from engines.whisper_chunked import WhisperStream
from pipeline.pcm import PcmConverter
from pipeline.recorder import TrackRecorder
from pipeline.sink import CollectingSink
from pipeline.speaker_stream import Participant, SpeakerStream
from protocol import CaptionFrame
from tests.conftest import read_wav16
from tests.live_helpers import live_engine

PACKET = 320  # 20 ms at 16 kHz
DTX_EVERY = 20  # an Opus DTX sender's one packet per 400 ms in silence


def room_noise(size: int, seed: int = 11) -> np.ndarray:
    """-60 dBFS, as the bridge benchmark's silent senders send."""
    return (np.random.default_rng(seed).standard_normal(size) * 30).astype(np.int16)


def as_dtx(track: np.ndarray, talking: np.ndarray) -> np.ndarray:
    """``track`` as the bot hears a DTX sender: outside ``talking``, one 20 ms packet per
    400 ms and zeros (the gaps the bridge fills) between."""
    out = track.copy()
    for index, begin in enumerate(range(0, track.size, PACKET)):
        if index % DTX_EVERY and not talking[begin : begin + PACKET].any():
            out[begin : begin + PACKET] = 0
    return out


def gate_events(
    samples: np.ndarray, every_frame: bool = False
) -> tuple[list[tuple[int, str]], int]:
    """(frame index, event) of a gate over ``samples``, and the frames webrtcvad heard;
    ``every_frame``: webrtcvad hears the all-zero frames too (the gate without its shortcut)."""
    gate = SpeechGate(VadConfig())
    audio = samples[: samples.size // FRAME * FRAME].astype(np.float32) / 32768
    pcm = pcm16(audio)
    zero = ~audio.reshape(-1, FRAME).any(axis=1)
    found = []
    for index in range(zero.size):
        event = gate.pcm_frame(
            pcm[index * 2 * FRAME : (index + 1) * 2 * FRAME], bool(zero[index]) and not every_frame
        )
        if event:
            found.append((index, event))
    return found, gate.vad_frames


def opus_like_frames(speech: np.ndarray) -> list[av.AudioFrame]:
    """Real speech as aiortc's Opus decoder hands it over: 20 ms of s16 stereo at 48 kHz."""
    up = av.AudioResampler(format="s16", layout="stereo", rate=48000)
    mono = av.AudioFrame.from_ndarray(speech.reshape(1, -1), format="s16", layout="mono")
    mono.sample_rate = SAMPLE_RATE
    stereo = np.concatenate([f.to_ndarray() for f in up.resample(mono)], axis=1)
    frames = []
    for begin in range(0, stereo.shape[1] - 1920 + 1, 1920):
        frame = av.AudioFrame.from_ndarray(
            stereo[:, begin : begin + 1920], format="s16", layout="stereo"
        )
        frame.sample_rate = 48000
        frames.append(frame)
    return frames


def timeline(chunks: list[tuple[np.ndarray, float]]) -> dict[int, int]:
    placed: dict[int, int] = {}
    for samples, at in chunks:
        start = round(at * SAMPLE_RATE)
        placed.update(zip(range(start, start + samples.size), samples.tolist(), strict=True))
    return placed


def test_batched_resampling_gives_the_samples_and_times_of_frame_by_frame() -> None:
    speech = librivox()[0].samples
    rng = np.random.default_rng(3)
    pts, at = [], 0
    for _ in range(len(opus_like_frames(speech))):
        draw = rng.random()
        if draw < 0.05:
            at += 960 * int(rng.integers(1, 25))  # lost packets or a DTX gap
        elif draw < 0.07 and pts:
            pts.append(pts[-1])  # a late duplicate: dropped
            continue
        pts.append(at)
        at += 960

    def frames() -> list[av.AudioFrame]:
        made = opus_like_frames(speech)
        for frame, stamp in zip(made, pts, strict=True):
            frame.pts, frame.time_base = stamp, fractions.Fraction(1, 48000)
        return made

    one = PcmConverter()
    by_frame = [c for f in frames() if (c := one.convert(f)) is not None]
    batched = PcmConverter(batch_s=0.1)
    chunks: list[tuple[np.ndarray, float]] = []
    late = 0
    for frame in frames():
        got = batched.add(frame)
        late += got is None
        chunks += got or []
    chunks += batched.flush()
    assert late == len(pts) - len(by_frame) > 0
    assert len(chunks) < len(by_frame) / 3, "frames must be resampled in batches"
    assert timeline(chunks) == timeline(by_frame)
    assert max(c[0].size for c in chunks) >= 0.1 * SAMPLE_RATE


def test_dtx_silence_costs_no_vad_calls_and_is_no_speech() -> None:
    seconds = 20
    silence = as_dtx(room_noise(seconds * SAMPLE_RATE), np.zeros(seconds * SAMPLE_RATE, bool))
    frames = silence.size // FRAME
    found, heard = gate_events(silence)
    assert found == [], "a DTX sender's room noise is not speech"
    packets = seconds * SAMPLE_RATE // PACKET // DTX_EVERY
    assert heard <= 2 * packets < frames / 5, (heard, frames)
    # webrtcvad on every frame: its hangover carries a packet into the zeros after it
    assert any(event == "start" for _, event in gate_events(silence, every_frame=True)[0])

    stream = live_engine().create_stream()
    assert isinstance(stream, WhisperStream)
    for begin in range(0, silence.size, 1600):
        stream.accept(silence[begin : begin + 1600].astype(np.float32) / 32768)
    assert stream.next_work(1.0) is None and stream.backlog_seconds == 0
    assert stream._position == frames * FRAME  # audio time kept, frame by frame


def test_the_shortcut_keeps_speech_onsets_on_the_dev_sets() -> None:
    """Continuous senders (room noise, never all zero): the same events, frame for frame.
    Speech with zeros between: the same onsets. DTX talkers: every onset lies in their speech,
    where webrtcvad on every frame also opens utterances in their silence."""
    clips = librivox()
    gapped = np.concatenate(
        [np.concatenate([c.samples, np.zeros(SAMPLE_RATE, np.int16)]) for c in clips]
    )
    found, heard = gate_events(gapped)
    reference, heard_all = gate_events(gapped, every_frame=True)
    starts = [i for i, e in found if e == "start"]
    assert starts == [i for i, e in reference if e == "start"] and len(starts) == len(clips)
    assert heard < heard_all
    meeting = dev_meeting(3)
    false_starts = 0
    for name, track in meeting.tracks.items():
        found, heard = gate_events(track)
        assert (found, heard) == gate_events(track, every_frame=True), name
        talking = np.zeros(track.size, bool)
        for u in meeting.utterances:
            if u.participant == name:  # with the gate's pre-roll before the first word
                talking[int((u.start - 0.5) * SAMPLE_RATE) : int(u.end * SAMPLE_RATE)] = True
        dtx = as_dtx(track, talking)
        found, heard = gate_events(dtx)
        onsets = [i * FRAME for i, e in found if e == "start"]
        assert onsets and all(talking[at] for at in onsets), (name, onsets)
        assert heard < 0.9 * gate_events(dtx, every_frame=True)[1]
        reference, _ = gate_events(dtx, every_frame=True)
        false_starts += sum(not talking[i * FRAME] for i, e in reference if e == "start")
    assert false_starts > 0, "the DTX tracks were meant to trip webrtcvad's hangover"


async def test_a_dtx_gap_is_recorded_as_zeros_and_gives_no_captions(tmp_path: Path) -> None:
    scheduler = DecodeScheduler(threads=1)
    await scheduler.start()
    try:
        sink = CollectingSink()
        recorder = TrackRecorder(tmp_path / "quiet.wav")
        stream = SpeakerStream(
            Participant("r", "quiet"), live_engine(), scheduler, sink, recorder=recorder
        )
        noise = room_noise(PACKET * 50)
        for index in range(50):  # 20 s: a packet every 400 ms, the gaps are holes
            stream.push(noise[index * PACKET : (index + 1) * PACKET], at=index * 0.4)
        await stream.close()
        assert not [f for f in sink.frames if isinstance(f, CaptionFrame)]
        audio = read_wav16(recorder.path)
        assert audio.size == 49 * 6400 + PACKET
        for index in range(49):
            begin = index * 6400
            assert np.array_equal(
                audio[begin : begin + PACKET], noise[index * PACKET : (index + 1) * PACKET]
            )
            assert not audio[begin + PACKET : begin + 6400].any()
    finally:
        await scheduler.stop()
