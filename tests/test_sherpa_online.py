import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest

from engines.base import EngineError, Hypothesis, ModelNotFoundError, Work
from engines.models import ResolvedModel, resolve
from engines.recognize import RecognizeStream
from engines.scheduler import DecodeScheduler
from engines.sherpa_online import SherpaOnlineEngine, SherpaOnlineStream
from tests.tiny_models import (
    HIGH_TONE_HZ,
    LOW_TONE_HZ,
    build_transducer,
    build_zipformer2_ctc,
    silence,
    tone,
)

# 0.3 s silence, HELLO (low tone 0.3-0.8 s), WORLD (high tone 0.8-1.3 s), 1 s silence
UTTERANCE = np.concatenate(
    [silence(0.3), tone(LOW_TONE_HZ, 0.5), tone(HIGH_TONE_HZ, 0.5), silence(1.0)]
)
FRAME = 320  # 20 ms, what a WebRTC track delivers


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {
        "transducer": build_transducer(root / "transducer"),
        "ctc": build_zipformer2_ctc(root / "ctc"),
    }


@pytest.fixture(scope="module")
def engine(
    model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> SherpaOnlineEngine:
    model = resolve(str(model_dirs["transducer"]), tmp_path_factory.mktemp("data"))
    return SherpaOnlineEngine(model, endpoint_rule1_s=1.0, endpoint_rule2_s=0.5)


async def push_live(stream: RecognizeStream, audio: np.ndarray) -> None:
    """20 ms frames, yielding to the loop between them so decoding interleaves."""
    for start in range(0, audio.size, FRAME):
        stream.push_frame(audio[start : start + FRAME])
        await asyncio.sleep(0.002)


async def collect(
    stream: RecognizeStream, into: list[Hypothesis], got_final: asyncio.Event | None = None
) -> None:
    async for event in stream:
        into.append(event)
        if event.kind == "final" and got_final is not None:
            got_final.set()


async def test_interims_then_final_on_endpoint(
    engine: SherpaOnlineEngine, scheduler: DecodeScheduler
) -> None:
    stream = RecognizeStream(engine, scheduler)
    events: list[Hypothesis] = []
    got_final = asyncio.Event()
    consumer = asyncio.create_task(collect(stream, events, got_final))
    await push_live(stream, UTTERANCE)
    await asyncio.wait_for(got_final.wait(), 10)  # the endpoint closes the utterance, not end_input
    stream.end_input()
    await asyncio.wait_for(consumer, 10)

    finals = [e for e in events if e.kind == "final"]
    interims = [e for e in events if e.kind == "interim"]
    assert [f.text for f in finals] == ["HELLO WORLD"]
    assert interims and events.index(interims[0]) < events.index(finals[0])
    assert any(i.text == "HELLO" for i in interims)  # the partial before WORLD was spoken
    final = finals[0]
    assert [w.word for w in final.words] == ["HELLO", "WORLD"]
    hello, world = final.words
    assert hello.start == pytest.approx(0.3, abs=0.08)
    assert world.start == pytest.approx(0.8, abs=0.08)
    assert (
        final.start
        <= hello.start
        < hello.end
        <= world.start
        < world.end
        <= final.end
        <= UTTERANCE.size / 16000
    )
    assert all(0 < w.confidence <= 1 for w in final.words)
    assert final.stable_chars == len(final.text)


async def test_utterances_keep_stream_time(
    engine: SherpaOnlineEngine, scheduler: DecodeScheduler
) -> None:
    stream = RecognizeStream(engine, scheduler)
    events: list[Hypothesis] = []
    consumer = asyncio.create_task(collect(stream, events))
    second = np.concatenate([tone(LOW_TONE_HZ, 0.4), silence(1.0)])
    await push_live(stream, np.concatenate([UTTERANCE, second]))
    stream.end_input()
    await asyncio.wait_for(consumer, 10)

    finals = [e for e in events if e.kind == "final"]
    assert [(f.utterance, f.text) for f in finals] == [(0, "HELLO WORLD"), (1, "HELLO")]
    offset = UTTERANCE.size / 16000
    assert finals[1].words[0].start == pytest.approx(offset, abs=0.08)
    assert finals[1].start > finals[0].end


async def test_end_input_flushes_the_tail(
    engine: SherpaOnlineEngine, scheduler: DecodeScheduler
) -> None:
    # the tone ends the audio: without tail padding its frames never fill a decode chunk
    stream = RecognizeStream(engine, scheduler)
    stream.push_frame(np.concatenate([silence(1.0), tone(HIGH_TONE_HZ, 0.25)]))
    stream.end_input()
    events = [e async for e in stream]
    finals = [e for e in events if e.kind == "final"]
    assert [f.text for f in finals] == ["WORLD"]
    assert finals[0].words[0].start == pytest.approx(1.0, abs=0.08)
    assert finals[0].end <= 1.25


async def test_silence_only_gives_no_final(
    engine: SherpaOnlineEngine, scheduler: DecodeScheduler
) -> None:
    stream = RecognizeStream(engine, scheduler)
    stream.push_frame(silence(2.5))
    stream.end_input()
    assert [e async for e in stream] == []


def test_two_streams_decode_in_one_batch(
    engine: SherpaOnlineEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_sizes: list[int] = []
    decode_streams = engine.recognizer.decode_streams

    def counting(streams: list[object]) -> None:
        batch_sizes.append(len(streams))
        decode_streams(streams)

    monkeypatch.setattr(engine.recognizer, "decode_streams", counting)
    low, high = engine.create_stream(), engine.create_stream()
    low.accept(np.concatenate([silence(0.2), tone(LOW_TONE_HZ, 0.5), silence(0.8)]))
    high.accept(np.concatenate([silence(0.2), tone(HIGH_TONE_HZ, 0.5), silence(0.8)]))
    results = engine.run_batch([(low, Work.PARTIAL), (high, Work.PARTIAL)])

    assert batch_sizes and set(batch_sizes) == {2}
    assert [[h.text for h in r if h.kind == "final"] for r in results] == [["HELLO"], ["WORLD"]]


async def test_scheduler_batches_live_streams(
    engine: SherpaOnlineEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_sizes: list[int] = []
    decode_streams = engine.recognizer.decode_streams

    def counting(streams: list[object]) -> None:
        batch_sizes.append(len(streams))
        decode_streams(streams)

    monkeypatch.setattr(engine.recognizer, "decode_streams", counting)
    scheduler = DecodeScheduler(threads=1)
    await scheduler.start()
    try:
        streams = [RecognizeStream(engine, scheduler) for _ in range(3)]
        pitches = [LOW_TONE_HZ, HIGH_TONE_HZ, LOW_TONE_HZ]
        for stream, pitch in zip(streams, pitches, strict=True):
            stream.push_frame(np.concatenate([tone(pitch, 0.4), silence(1.0)]))
            stream.end_input()
        texts = [[e.text async for e in stream if e.kind == "final"] for stream in streams]
    finally:
        await scheduler.stop()
    assert texts == [["HELLO"], ["WORLD"], ["HELLO"]]
    assert max(batch_sizes) == 3


async def test_zipformer2_ctc_model(
    model_dirs: dict[str, Path], scheduler: DecodeScheduler, tmp_path: Path
) -> None:
    model = resolve(str(model_dirs["ctc"]), tmp_path)
    assert model.kind == "sherpa-zipformer2-ctc"
    ctc = SherpaOnlineEngine(model, endpoint_rule2_s=0.5)
    stream = RecognizeStream(ctc, scheduler)
    await push_live(stream, UTTERANCE)
    stream.end_input()
    finals = [e async for e in stream if e.kind == "final"]
    assert [f.text for f in finals] == ["HELLO WORLD"]
    assert finals[0].words[1].start == pytest.approx(0.8, abs=0.08)


def test_stream_contract_errors(
    engine: SherpaOnlineEngine, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    stream = engine.create_stream()
    assert stream.next_work(1.0) is None
    stream.accept(silence(0.05))
    assert stream.next_work(1.0) is None  # below the partial cadence
    assert stream.next_work(0.2) is None
    stream.accept(silence(0.1))
    assert stream.next_work(1.0) == Work.PARTIAL
    assert stream.next_work(3.0) is None  # load stretches the cadence
    stream.finish()
    assert stream.next_work(1.0) == Work.FINAL
    with pytest.raises(EngineError, match="already finished"):
        stream.accept(silence(0.1))
    assert stream.run(Work.FINAL) == [] and stream.done
    assert stream.run(Work.FINAL) == []  # safe with nothing to do

    other = SherpaOnlineEngine(resolve(str(model_dirs["transducer"]), tmp_path))
    with pytest.raises(EngineError, match="another engine"):
        engine.run_batch([(other.create_stream(), Work.PARTIAL)])


def test_bounded_input_buffer_drops_and_counts(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    small = SherpaOnlineEngine(resolve(str(model_dirs["transducer"]), tmp_path), max_buffer_s=1.0)
    stream = small.create_stream()
    assert isinstance(stream, SherpaOnlineStream)
    for _ in range(30):
        stream.accept(silence(0.1))
    assert stream.stats.dropped_samples == 20 * 1600


def test_bad_models_are_refused_without_killing_the_process(
    model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    absent = ResolvedModel(
        "x", "sherpa-transducer", tmp_path / "nope", False, 0, "url:http://example/x.tar.bz2"
    )
    with pytest.raises(ModelNotFoundError, match="not present"):
        SherpaOnlineEngine(absent)

    broken = tmp_path / "broken"
    shutil.copytree(model_dirs["transducer"], broken)
    (broken / "encoder.onnx").write_bytes(b"not a model at all")
    with pytest.raises(EngineError, match="encoder.onnx"):
        SherpaOnlineEngine(resolve(str(broken), tmp_path))

    # sherpa-onnx calls exit() on a missing metadata key; the engine must refuse it first
    import onnx

    missing = tmp_path / "missing"
    shutil.copytree(model_dirs["transducer"], missing)
    encoder = onnx.load(str(missing / "encoder.onnx"))
    kept = [p for p in encoder.metadata_props if p.key != "decode_chunk_len"]
    del encoder.metadata_props[:]
    encoder.metadata_props.extend(kept)
    onnx.save(encoder, str(missing / "encoder.onnx"))
    with pytest.raises(EngineError, match="decode_chunk_len"):
        SherpaOnlineEngine(resolve(str(missing), tmp_path))

    whisper = ResolvedModel("w", "whisper", tmp_path, True, 0, "path")
    with pytest.raises(EngineError, match="not a sherpa-onnx streaming one"):
        SherpaOnlineEngine(whisper)
