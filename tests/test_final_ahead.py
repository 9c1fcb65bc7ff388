"""A live final is decoded ahead during the pause that may be its endpoint: kept when the
endpoint comes (the same final, one encoder pass), thrown away when speech goes on."""

import numpy as np
import pytest

from bench.devsets import librivox
from bench.scoring import normalize
from engines.base import Hypothesis
from engines.whisper_chunked import WhisperStream
from tests.live_helpers import count_encodes, live_engine

WINDOW = 30 * 16000


def seconds(n: float) -> np.ndarray:
    return np.zeros(int(n * 16000), np.float32)


def speech(index: int) -> np.ndarray:
    return librivox()[index].samples.astype(np.float32) / 32768


def trimmed(index: int) -> np.ndarray:
    """The clip from 50 ms before its first loud sample to 50 ms after its last."""
    samples = speech(index)
    loud = np.flatnonzero(np.abs(samples) > 0.05)
    return samples[max(0, loud[0] - 800) : loud[-1] + 800]


def finals_of(stream: WhisperStream, audio: np.ndarray) -> list[Hypothesis]:
    """Feed 100 ms at a time, decoding whatever is due after each push (as the scheduler
    does when recognition keeps up)."""
    finals: list[Hypothesis] = []

    def drain() -> None:
        while (work := stream.next_work(1.0)) is not None:
            finals.extend(h for h in stream.run(work) if h.kind == "final")

    for begin in range(0, audio.size, 1600):
        stream.accept(audio[begin : begin + 1600])
        drain()
    stream.finish()
    drain()
    return finals


@pytest.fixture
def encoded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    return count_encodes(monkeypatch)


def test_a_final_decoded_ahead_is_the_final_the_endpoint_gives(
    encoded: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = live_engine()
    audio = np.concatenate((seconds(1), speech(2), seconds(1.5)))
    ahead = engine.create_stream("en")
    (final,) = finals_of(ahead, audio)
    assert normalize(final.text) == normalize(librivox()[2].text)
    assert ahead.stats.finals_ahead_kept == 1
    # a final-sized window per decode ahead: the final itself encoded nothing more
    assert encoded.count(WINDOW) == ahead.stats.finals_ahead

    monkeypatch.setattr(engine.options, "final_ahead_s", 0.0)  # type: ignore[attr-defined]
    encoded.clear()
    plain = engine.create_stream("en")
    (expected,) = finals_of(plain, audio)
    assert plain.stats.finals_ahead == 0 and encoded.count(WINDOW) == 1
    assert (final.text, final.start, final.end, final.words) == (
        expected.text,
        expected.start,
        expected.end,
        expected.words,
    )


def test_speech_after_a_short_pause_throws_the_decode_ahead_away(encoded: list[int]) -> None:
    """0.3 s of silence between two sentences is a pause, not an endpoint (0.45 s): the
    decode made during it is wasted, and the one final holds every word of both."""
    engine = live_engine()
    audio = np.concatenate((seconds(1), trimmed(2), seconds(0.3), trimmed(4), seconds(1.5)))
    stream = engine.create_stream("en")
    finals = finals_of(stream, audio)
    clips = librivox()
    assert [normalize(f.text) for f in finals] == [
        f"{normalize(clips[2].text)} {normalize(clips[4].text)}"
    ]
    assert stream.stats.finals_ahead >= 2  # in the pause, and before the endpoint
    assert stream.stats.finals_ahead_kept == 1
    assert encoded.count(WINDOW) == stream.stats.finals_ahead


def test_no_decode_ahead_when_turned_off(
    encoded: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = live_engine()
    monkeypatch.setattr(engine.options, "final_ahead_s", 0.0)  # type: ignore[attr-defined]
    stream = engine.create_stream("en")
    finals = finals_of(stream, np.concatenate((seconds(1), speech(2), seconds(1.5))))
    assert [normalize(f.text) for f in finals] == [normalize(librivox()[2].text)]
    assert stream.stats.finals_ahead == 0 and encoded.count(WINDOW) == 1
