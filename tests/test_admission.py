import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect

from bench.scoring import wer
from pipeline.call import Admission, StreamKind
from tests.conftest import librivox_files, librivox_reference, read_wav16
from tests.listen_helpers import (
    Session,
    chunks,
    eventually,
    listen_server,
    receive_all,
    run_session,
)

START = {"type": "start", "sample_rate": 16000, "channels": 1, "encoding": "pcm_s16le"}
END = {"type": "end"}


def test_leases_count_by_kind_and_release_once() -> None:
    admission = Admission(2, max_duration_s=60, idle_timeout_s=5)
    first = admission.try_acquire(StreamKind.WEBSOCKET)
    second = admission.try_acquire(StreamKind.WEBRTC)
    assert first is not None and second is not None
    assert admission.try_acquire(StreamKind.WEBRTC) is None
    assert (admission.active(), admission.active("websocket"), admission.active("webrtc")) == (
        2,
        1,
        1,
    )
    admission.release(first)
    admission.release(first)
    assert admission.active() == 1
    assert admission.try_acquire(StreamKind.WEBSOCKET) is not None
    assert first.deadline == pytest.approx(first.started + 60)
    with pytest.raises(ValueError):
        Admission(-1, 60, 5)


def test_no_limit_admits_everything() -> None:
    admission = Admission(0, max_duration_s=60, idle_timeout_s=5)
    leases = [admission.try_acquire(StreamKind.WEBRTC) for _ in range(100)]
    assert all(leases) and admission.active() == 100


async def test_second_stream_is_refused_and_the_first_still_works(
    nats_url: str, tmp_path: Path
) -> None:
    path = librivox_files()[0]
    audio = read_wav16(path)
    reference = librivox_reference()[path.stem]
    pieces = chunks(np.concatenate([audio, np.zeros(16000, np.int16)]).tobytes(), (6401,))
    async with listen_server(nats_url, tmp_path, limits={"max_streams": 1}) as server:
        first = Session()
        async with connect(server.ws_url) as ws:
            reader = asyncio.create_task(receive_all(ws, first))
            await ws.send(json.dumps(START))
            await eventually(lambda: bool(first.messages))
            assert first.messages[0]["type"] == "ready"

            refused = await run_session(server.ws_url, START, end=END)
            assert refused.error["code"] == "CAPACITY"
            assert refused.close_code == 1013
            async with httpx.AsyncClient(base_url=server.http_url) as client:
                token = await client.post("/v1/listen/token")
                assert token.status_code == 503
                assert token.headers["Retry-After"] == "5"
                assert token.json()["error"]["code"] == "CAPACITY"
                metrics = (await client.get("/metrics")).text
            assert 'roomscribe_live_streams{kind="websocket"} 1.0' in metrics
            assert 'roomscribe_live_streams_refused_total{kind="websocket"} 2.0' in metrics
            assert "roomscribe_live_streams_limit 1.0" in metrics

            for piece in pieces:
                await ws.send(piece)
                await asyncio.sleep(0.01)
            await ws.send(json.dumps(END))
            await reader
        assert first.messages[-1]["type"] == "completed"
        text = " ".join(m["text"] for m in first.of("final"))
        assert wer(reference, text) <= 0.15, text

        await eventually(lambda: server.admission.active() == 0)
        again = await run_session(server.ws_url, START, end=END)
        assert [m["type"] for m in again.messages] == ["ready", "completed"]


async def test_max_duration_stops_the_stream_and_keeps_what_was_heard(
    nats_url: str, tmp_path: Path
) -> None:
    path = librivox_files()[0]
    audio = read_wav16(path)
    assert audio.size > 3 * 16000
    async with listen_server(nats_url, tmp_path, limits={"max_stream_s": 3}) as server:
        session = await run_session(
            server.ws_url, START, chunks(audio.tobytes(), (3333,)), pace_s=0.005
        )
        kinds = [m["type"] for m in session.messages]
        assert kinds[0] == "ready" and kinds[-1] == "completed", kinds
        assert session.messages[0]["max_duration_seconds"] == 3
        assert session.error["code"] == "MAX_DURATION_REACHED"
        assert kinds.index("error") < kinds.index("completed")
        completed = session.messages[-1]
        assert completed["streamed_seconds"] == 3.0
        assert completed["reason"] == "max_duration"
        assert session.close_code == 4002
        finals = session.of("final")
        assert finals and all(m["end"] <= 3.2 for m in finals)


async def test_max_duration_also_counts_wall_clock(nats_url: str, tmp_path: Path) -> None:
    limits = {"max_stream_s": 1.5, "idle_timeout_s": 10}
    async with listen_server(nats_url, tmp_path, limits=limits) as server:
        trickle = [np.zeros(1600, "<i2").tobytes()] * 8
        session = await run_session(server.ws_url, START, trickle, pace_s=0.5, within_s=20)
        assert session.error["code"] == "MAX_DURATION_REACHED"
        assert "wall clock" in session.error["message"]
        assert session.messages[-1]["type"] == "completed"
        assert session.messages[-1]["streamed_seconds"] < 0.5
        assert session.close_code == 4002


async def test_idle_stream_is_ended(nats_url: str, tmp_path: Path) -> None:
    async with listen_server(nats_url, tmp_path, limits={"idle_timeout_s": 1}) as server:
        silence = np.zeros(8000, "<i2").tobytes()
        session = await run_session(server.ws_url, START, [silence], within_s=20)
        assert [m["type"] for m in session.messages] == ["ready", "completed"]
        assert session.messages[-1]["reason"] == "idle"
        assert session.messages[-1]["streamed_seconds"] == 0.5
        assert session.close_code == 4003

        quiet = await run_session(server.ws_url, None, within_s=20)
        assert quiet.error["code"] == "PROTOCOL"
        assert "no start message" in quiet.error["message"]
        await eventually(lambda: server.admission.active() == 0)
