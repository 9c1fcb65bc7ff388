"""The pyannote phone call split by its RTTM into one track per speaker: who-said-what is exact."""

import asyncio
from pathlib import Path

from bench.devsets import split_by_rttm
from bench.scoring import normalize
from config import load_settings
from pipeline.call import CallSession
from pipeline.runtime import LiveRuntime
from pipeline.sink import CollectingSink
from protocol import CaptionFrame
from tests.conftest import read_wav16
from tests.live_helpers import live_engine
from tests.pyannote_sample import pyannote_sample

ONLY = {
    "diane": {"diane", "beep", "jersey", "didn't", "also", "though"},
    "sheila": {"sheila", "texas", "neither", "yankee", "difference", "isn't"},
}


async def test_each_participant_gets_only_their_own_words(tmp_path: Path) -> None:
    sample = pyannote_sample()
    tracks = split_by_rttm(read_wav16(sample.wav), sample.rttm)
    sink = CollectingSink()
    runtime = await LiveRuntime.create(load_settings(data_dir=tmp_path), sink, engine=live_engine())
    try:
        call = CallSession(runtime, "phone")
        await call.start()
        streams = {name: call.add_participant(name, name.title(), offset=0.0) for name in tracks}
        for begin in range(0, len(tracks["diane"]), 3200):
            for name, stream in streams.items():
                stream.push(tracks[name][begin : begin + 3200])
            await asyncio.sleep(0.02)
        record = await call.end("done")
    finally:
        await runtime.aclose()
    finals = [f for f in sink.frames if isinstance(f, CaptionFrame) and f.type == "final"]
    heard = {
        name: set(normalize(" ".join(f.text for f in finals if f.participant == name)).split())
        for name in tracks
    }
    for name, words in heard.items():
        other = next(n for n in ONLY if n != name)
        assert words & ONLY[name], f"{name} said none of {ONLY[name]}: {words}"
        assert not words & ONLY[other], (
            f"{name}'s captions carry {other}'s words: {words & ONLY[other]}"
        )
    for final in finals:
        assert final.name == final.participant.title()
    assert {p.participant for p in record.participants} == {"diane", "sheila"}
    assert all(
        (record.directory / p.file).stat().st_size > 16000 * 2 * 25 for p in record.participants
    )
