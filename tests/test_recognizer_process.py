"""Live recognition in its own process: same finals as in this process, a killed child ends
only its own streams (with an error frame; their recordings go on) and is started again,
and the child never outlives the bot."""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from config import Settings, load_settings
from engines.base import ModelNotFoundError
from pipeline.audio_io import decode_file
from pipeline.call import CallLimits, CallSession
from pipeline.recognizer_process import RecognizerProcess, RecognizerProcessError, RemoteEngine
from pipeline.runtime import LiveRuntime
from pipeline.sink import CollectingSink
from pipeline.speaker_stream import SpeakerStream
from protocol import CaptionFrame, ErrorFrame
from tests.api_helpers import wer
from tests.conftest import librivox_files, librivox_reference
from tests.listen_helpers import listen_server, run_session
from tests.live_helpers import live_engine

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 1600


def _settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path, live={"recognizer_process": True})


async def _feed(stream: SpeakerStream, pcm: np.ndarray, wait: bool = True) -> None:
    for begin in range(0, pcm.size, CHUNK):
        stream.push(pcm[begin : begin + CHUNK])
        if wait:
            await stream.caught_up()
        else:
            await asyncio.sleep(0)


def _finals(sink: CollectingSink, participant: str) -> list[str]:
    return [
        f.text
        for f in sink.frames
        if isinstance(f, CaptionFrame) and f.type == "final" and f.participant == participant
    ]


async def _transcribe(runtime: LiveRuntime, clips: list[np.ndarray]) -> list[list[str]]:
    assert isinstance(runtime.sink, CollectingSink)
    call = CallSession(runtime, "room", CallLimits(idle_timeout_s=60))
    await call.start()
    streams = [call.add_participant(f"p{i}") for i in range(len(clips))]
    for stream, clip in zip(streams, clips, strict=True):
        await _feed(stream, clip)  # one at a time: no batch depends on timing
    await call.end()
    return [_finals(runtime.sink, f"p{i}") for i in range(len(clips))]


@pytest.fixture
async def remote(tmp_path: Path) -> AsyncIterator[LiveRuntime]:
    runtime = await LiveRuntime.create(_settings(tmp_path), CollectingSink())
    yield runtime
    await runtime.aclose()


async def test_finals_from_the_recognition_process_equal_those_decoded_here(
    remote: LiveRuntime, tmp_path: Path
) -> None:
    assert isinstance(remote.recognition, RecognizerProcess)
    assert isinstance(remote.engine, RemoteEngine) and remote.engine.info.name == "whisper-tiny.en"
    clips = [decode_file(path) for path in librivox_files()[:2]]
    there = await _transcribe(remote, clips)
    # the child decodes on every core
    settings = load_settings(data_dir=tmp_path / "local", live={"decode_threads": os.cpu_count()})
    local = await LiveRuntime.create(settings, CollectingSink(), engine=live_engine())
    try:
        here = await _transcribe(local, clips)
    finally:
        await local.aclose()
    assert there == here
    references = librivox_reference()
    for path, finals in zip(librivox_files()[:2], there, strict=True):
        assert wer(references[path.stem], " ".join(finals)) < 0.1


async def test_a_killed_recognition_process_ends_its_streams_only_and_comes_back(
    remote: LiveRuntime,
) -> None:
    process = remote.recognition
    assert isinstance(process, RecognizerProcess) and process.pid is not None
    sink = remote.sink
    assert isinstance(sink, CollectingSink)
    first, second = (decode_file(path) for path in librivox_files()[:2])
    call = CallSession(remote, "room", CallLimits(idle_timeout_s=60))
    await call.start()
    ann = call.add_participant("ann")
    await _feed(ann, first[: 3 * 16_000])
    killed = process.pid
    os.kill(killed, signal.SIGKILL)
    async with asyncio.timeout(10):
        while not any(isinstance(f, ErrorFrame) for f in sink.frames):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    (error,) = [f for f in sink.frames if isinstance(f, ErrorFrame)]
    assert (error.code, error.participant) == ("ENGINE_FAILED", "ann")
    assert "recognition process ended (signal 9)" in error.message
    assert "its recording goes on" in error.message
    # the stream goes on taking audio: it is recorded, not recognized
    await _feed(ann, first[3 * 16_000 :], wait=False)
    async with asyncio.timeout(60):
        while not (process.pid != killed and process.active_streams == 0 and _up(process)):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert process.restarts == 1
    bob = call.add_participant("bob")
    await _feed(bob, second)
    record = await call.end()
    assert wer(librivox_reference()[librivox_files()[1].stem], " ".join(_finals(sink, "bob"))) < 0.1
    (ann_record,) = [p for p in record.participants if p.participant == "ann"]
    recorded = decode_file(record.audio_path(ann_record))
    assert recorded.size == first.size
    assert np.array_equal(recorded, first)
    names = {m.name: m for m in process.metrics()}
    assert names["roomscribe_recognizer_restarts"].samples[0].value == 1
    assert names["roomscribe_recognizer_up"].samples[0].value == 1


def _up(process: RecognizerProcess) -> bool:
    return bool(
        next(m for m in process.metrics() if m.name == "roomscribe_recognizer_up").samples[0].value
    )


def test_the_recognition_process_does_not_outlive_the_bot(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio
        from config import load_settings
        from pipeline.recognizer_process import RecognizerProcess

        async def main():
            process = RecognizerProcess(load_settings(data_dir={str(tmp_path)!r}))
            await process.start()
            print(process.pid, flush=True)
            await asyncio.sleep(600)

        asyncio.run(main())
        """
    )
    bot = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert bot.stdout is not None
        child = int(bot.stdout.readline())
        assert Path(f"/proc/{child}").exists()
        assert (
            os.getpriority(os.PRIO_PROCESS, child) >= os.getpriority(os.PRIO_PROCESS, bot.pid) + 10
        )
    finally:
        bot.kill()
        bot.wait()
    deadline = time.monotonic() + 15
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def test_a_recognition_process_that_cannot_start_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", "/bin/false")
    with pytest.raises(RecognizerProcessError, match=r"did not start \(exit code 1"):
        await LiveRuntime.create(_settings(tmp_path), CollectingSink())


async def test_an_unknown_live_model_is_refused_before_the_process_loads_it(
    tmp_path: Path,
) -> None:
    settings = load_settings(
        data_dir=tmp_path,
        live={"recognizer_process": True, "model": "sherpa-onnx-streaming-zipformer-en-2023-06-26"},
    )
    with pytest.raises(ModelNotFoundError, match="not downloaded yet"):
        await LiveRuntime.create(settings, CollectingSink())


async def test_serve_decodes_a_listen_session_in_the_recognition_process(
    nats_url: str, tmp_path: Path
) -> None:
    path = librivox_files()[2]
    pcm = decode_file(path)
    start = {"type": "start", "sample_rate": 16000}
    async with listen_server(nats_url, tmp_path, shared_engine=False) as server:
        process = server.runtime.recognition
        assert isinstance(process, RecognizerProcess)
        audio = [pcm[i : i + 3200].tobytes() for i in range(0, pcm.size, 3200)]
        session = await run_session(server.ws_url, start, audio, end={"type": "end"})
        finals = " ".join(m["text"] for m in session.of("final"))
        assert wer(librivox_reference()[path.stem], finals) < 0.1
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"{server.http_url}/metrics")).text
        assert "roomscribe_recognizer_up 1.0" in metrics
        assert "roomscribe_recognizer_restarts_total 0.0" in metrics
        pid = process.pid
    assert pid is not None and not _alive(pid)
