import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from nats.aio.msg import Msg
from websockets.asyncio.client import connect

from bench.scoring import wer
from protocol import CaptionFrame, parse_frame
from tests.api_helpers import wait_done
from tests.conftest import librivox_files, librivox_reference, read_wav16
from tests.listen_helpers import (
    Session,
    chunks,
    eventually,
    listen_server,
    receive_all,
    run_session,
    to_48k_stereo,
)

START_48K = {
    "type": "start",
    "language": "en",
    "sample_rate": 48000,
    "channels": 2,
    "encoding": "pcm_s16le",
    "interim_results": True,
}
END = {"type": "end"}
ODD_SIZES = (4001, 777, 12345, 3)


def speech(count: int | None = None) -> tuple[np.ndarray, str]:
    files = librivox_files()[:count]
    refs = librivox_reference()
    silence = np.zeros(16000, np.int16)
    audio = np.concatenate([np.concatenate([read_wav16(f), silence]) for f in files])
    return audio, " ".join(refs[f.stem] for f in files)


async def test_48k_stereo_speech_in_odd_chunks(nats_url: str, tmp_path: Path) -> None:
    audio, reference = speech()
    data = to_48k_stereo(audio)
    pieces = chunks(data, ODD_SIZES)
    # about a fifth of real time: fast, yet slow enough for partials to appear
    pace = 0.2 * (len(data) / 192000) / len(pieces)
    async with listen_server(nats_url, tmp_path, postcall={"run_worker": True}) as server:
        on_nats: list[CaptionFrame] = []

        async def collect(msg: Msg) -> None:
            frame = parse_frame(msg.data)
            assert isinstance(frame, CaptionFrame)
            on_nats.append(frame)

        start = {**START_48K, "room": "book club", "participant": "reader", "name": "Reader"}
        subjects = server.runtime.subjects
        await server.nc.subscribe(subjects.room_captions("book club"), cb=collect)
        session = await run_session(server.ws_url, start, pieces, pace_s=pace, end=END)

        assert session.close_code == 1000
        kinds = [m["type"] for m in session.messages]
        assert kinds[0] == "ready" and kinds[-1] == "completed", kinds
        assert set(kinds) == {"ready", "partial", "final", "completed"}, kinds
        ready, completed = session.messages[0], session.messages[-1]
        finals = [CaptionFrame.model_validate(m) for m in session.of("final")]
        assert all(f.room == "book club" and f.participant == "reader" for f in finals)
        assert all(f.name == "Reader" for f in finals)
        hypothesis = " ".join(f.text for f in finals)
        assert wer(reference, hypothesis) <= 0.08, hypothesis
        assert all(f.words for f in finals if f.text.strip())
        assert completed["job_id"] == ready["job_id"]
        assert completed["reason"] == "end"
        assert abs(completed["streamed_seconds"] - audio.size / 16000) < 0.05

        await server.nc.flush()
        await asyncio.sleep(0.3)
        assert [f.segment_id for f in on_nats if f.type == "final"] == [
            f.segment_id for f in finals
        ]

        async with httpx.AsyncClient(base_url=server.http_url) as client:
            body = await wait_done(client, ready["job_id"], limit_s=240)
            assert body["status"] == "completed", body
            # the session's one job: its post-call pass, carrying the live segment ids
            listed = (await client.get("/v1/transcripts")).json()["data"]
            assert [job["id"] for job in listed] == [ready["job_id"]]
            segments = body["transcript"]["segments"]
            carried = [sid for s in segments for sid in s["live_segment_ids"]]
            assert carried and set(carried) <= {f.segment_id for f in finals if f.text.strip()}
            assert wer(reference, " ".join(s["text"] for s in segments)) <= 0.1
            srt = await client.get(f"/v1/transcripts/{ready['job_id']}.srt")
            assert srt.status_code == 200 and "-->" in srt.text
        call_dir = server.runtime.calls_dir / body["source"]["call_id"]
        call = json.loads((call_dir / "call.json").read_text())
        assert call["room"] == "book club" and call["end_reason"] == "end"
        assert call["job_id"] == ready["job_id"] and call["handed_over"]
        wav = call_dir / call["participants"][0]["file"]
        assert abs((wav.stat().st_size - 44) / 32000 - audio.size / 16000) < 0.05


async def test_disconnect_mid_stream_still_saves_the_transcript(
    nats_url: str, tmp_path: Path
) -> None:
    audio, reference = speech(1)
    pieces = chunks(to_48k_stereo(audio), (9601,))
    async with listen_server(nats_url, tmp_path, postcall={"run_worker": True}) as server:
        session = Session()
        async with connect(server.ws_url) as ws:
            reader = asyncio.create_task(receive_all(ws, session))
            await ws.send(json.dumps(START_48K))
            for piece in pieces:
                await ws.send(piece)
            await asyncio.sleep(0.5)
        # the client went away without "end": no completed frame, but the job is stored
        await reader
        job_id = session.messages[0]["job_id"]
        assert "completed" not in [m["type"] for m in session.messages]
        async with httpx.AsyncClient(base_url=server.http_url) as client:

            async def handed_over() -> bool:
                return (await client.get(f"/v1/transcripts/{job_id}")).status_code == 200

            await eventually(handed_over, within_s=60)
            body = await wait_done(client, job_id, limit_s=240)
        assert body["status"] == "completed", body
        text = " ".join(s["text"] for s in body["transcript"]["segments"])
        assert wer(reference, text) <= 0.15, text


async def test_bad_input_gets_a_precise_error_and_the_service_goes_on(
    nats_url: str, tmp_path: Path
) -> None:
    start16: dict[str, Any] = {
        "type": "start",
        "sample_rate": 16000,
        "channels": 1,
        "encoding": "pcm_s16le",
    }
    cases: list[tuple[Any, Any, str, int, str]] = [
        (b"\x00\x01" * 100, None, "PROTOCOL", 1008, "binary audio before the start"),
        (
            {**start16, "encoding": "opus"},
            None,
            "INVALID_CONFIG",
            1003,
            "unsupported encoding 'opus'",
        ),
        ({**start16, "channels": 3}, None, "INVALID_CONFIG", 1003, "channels"),
        ({**start16, "sample_rate": 1_000_000}, None, "INVALID_CONFIG", 1003, "sample_rate"),
        ({**start16, "language": "xx"}, None, "INVALID_REQUEST", 1003, "language 'xx'"),
        ({"type": "hello"}, None, "PROTOCOL", 1008, "must be 'start'"),
        ("not json", None, "PROTOCOL", 1008, "JSON"),
        (start16, {"type": "pause"}, "PROTOCOL", 1008, "unknown message type 'pause'"),
        (start16, "{oops", "PROTOCOL", 1008, "JSON"),
    ]
    async with listen_server(nats_url, tmp_path) as server:
        for start, later, code, close_code, words in cases:
            audio = [np.zeros(1600, "<i2").tobytes()] if later is not None else []
            session = Session()
            async with asyncio.timeout(30), connect(server.ws_url) as ws:
                reader = asyncio.create_task(receive_all(ws, session))
                await ws.send(json.dumps(start) if isinstance(start, dict) else start)
                for piece in audio:
                    await ws.send(piece)
                if later is not None:
                    await ws.send(json.dumps(later) if isinstance(later, dict) else later)
                await reader
            assert session.error["code"] == code, (start, session.messages)
            assert words in session.error["message"], session.error
            assert session.close_code == close_code
            if later is not None:
                assert session.messages[0]["type"] == "ready"
        await eventually(lambda: server.admission.active() == 0)

        named = {**start16, "room": "r", "participant": "p"}
        first = Session()
        async with connect(server.ws_url) as ws:
            reader = asyncio.create_task(receive_all(ws, first))
            await ws.send(json.dumps(named))
            await eventually(lambda: bool(first.messages))
            twin = await run_session(server.ws_url, named, end=END)
            assert twin.error["code"] == "INVALID_CONFIG"
            assert "already streaming" in twin.error["message"]
            assert twin.close_code == 1008
            await ws.send(json.dumps(END))
            await reader
        assert [m["type"] for m in first.messages] == ["ready", "completed"]

        good = await run_session(server.ws_url, start16, [np.zeros(8000, "<i2").tobytes()], end=END)
        assert [m["type"] for m in good.messages] == ["ready", "completed"]
        assert good.messages[-1]["streamed_seconds"] == 0.5


async def test_api_key_and_token_auth(nats_url: str, tmp_path: Path) -> None:
    start = {"type": "start", "sample_rate": 16000}
    async with listen_server(nats_url, tmp_path, api={"api_keys": ["k-one"]}) as server:
        for query in ("", "?api_key=wrong", "?token=123.abc.def"):
            session = await run_session(server.ws_url + query, start, end=END)
            assert session.error["code"] == "UNAUTHORIZED", query
            assert session.close_code == 4001
        async with httpx.AsyncClient(base_url=server.http_url) as client:
            refused = await client.post("/v1/listen/token")
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "UNAUTHORIZED"
            issued = await client.post(
                "/v1/listen/token", headers={"Authorization": "Bearer k-one"}
            )
            assert issued.status_code == 200
            token = issued.json()["token"]
        tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        session = await run_session(f"{server.ws_url}?token={tampered}", start, end=END)
        assert session.error["code"] == "UNAUTHORIZED"
        for query in ("?api_key=k-one", f"?token={token}"):
            session = await run_session(server.ws_url + query, start, end=END)
            assert [m["type"] for m in session.messages] == ["ready", "completed"], query
            assert session.close_code == 1000
