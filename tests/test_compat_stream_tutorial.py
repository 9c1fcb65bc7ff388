"""``WS /v1/stream``: the tutorial's streaming API, with its own start message, its segment
frames in order, the summary at the end, and the session saved as a normal job."""

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from websockets.asyncio.client import connect

from bench.scoring import wer
from tests.compat_stream_helpers import LIVE_SLACK, pieces, plain_wer, saved_job, speech
from tests.listen_helpers import Session, listen_server, receive_all, run_session, to_48k_stereo

KEY = "tutorial-key"
# the tutorial's control message, verbatim
START = {"type": "start", "sample_rate": 16000, "language": "en", "diarize": True}
END = {"type": "end"}
BEARER = {"Authorization": f"Bearer {KEY}"}


def url(port: int, query: str = "") -> str:
    return f"ws://127.0.0.1:{port}/v1/stream{query}"


def check_segments(messages: list[dict[str, Any]]) -> str:
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "started" and kinds[-1] == "completed", kinds
    assert {"partial", "final"} <= set(kinds), kinds
    segments = [m for m in messages if m["type"] in ("partial", "final")]
    seqs = [m["seq"] for m in segments]
    assert seqs == sorted(set(seqs)), "seq strictly increases"
    for m in segments:
        assert set(m) >= {"seq", "start", "end", "text", "speaker", "confidence"}
        assert 0 <= m["start"] <= m["end"] and m["speaker"] == "S1"
        if m["type"] == "final" and m["text"].strip():
            assert 0 < m["confidence"] <= 1
            words = m["words"]
            assert m["confidence"] == round(sum(w["confidence"] for w in words) / len(words), 3)
    return " ".join(m["text"] for m in segments if m["type"] == "final")


async def test_the_tutorial_client_streams_and_gets_the_summary_at_the_end(
    nats_url: str, tmp_path: Path
) -> None:
    audio, reference = speech(3)
    data = pieces(audio.astype("<i2").tobytes(), 1280)  # 40 ms, as the tutorial's worklet
    async with listen_server(
        nats_url,
        tmp_path,
        api={"api_keys": [KEY]},
        postcall={"run_worker": True, "summarize": True},
    ) as server:
        session = await run_session(
            url(server.port, f"?api_key={KEY}"),
            {**START, "summarize": True},
            data,
            pace_s=0.04 / 4,  # four times real time
            end=END,
            within_s=300,
        )
        assert session.close_code == 1000
        messages = session.messages
        text = check_segments(messages)
        print(
            f"tutorial 4x: WER {wer(reference, text):.1%}, plain {plain_wer(audio, reference):.1%}"
        )
        assert wer(reference, text) <= plain_wer(audio, reference) + LIVE_SLACK, text
        started, summary, completed = messages[0], messages[-2], messages[-1]
        job_id = started["id"]
        assert job_id and started["session_id"] and started["max_duration_seconds"] > 0
        assert summary["type"] == "summary" and summary["id"] == job_id
        assert summary["summary"]["summary"], summary
        assert all(item["text"] for item in summary["summary"]["summary"])
        assert completed["id"] == job_id and completed["status"] == "succeeded"
        assert abs(completed["streamed_seconds"] - audio.size / 16000) < 0.05
        body = await saved_job(server.http_url, job_id, BEARER)
        assert body["status"] == "completed"
        assert body["transcript"]["summary"]["summary"] == summary["summary"]["summary"]
        async with httpx.AsyncClient(base_url=server.http_url, headers=BEARER) as client:
            srt = await client.get(f"/v1/transcripts/{job_id}.srt")
            assert srt.status_code == 200 and "-->" in srt.text


async def test_48k_without_summary_auth_and_bad_input(nats_url: str, tmp_path: Path) -> None:
    audio, reference = speech(2)
    data = pieces(to_48k_stereo(audio), 7680)  # 40 ms of 48 kHz stereo
    async with listen_server(
        nats_url, tmp_path, api={"api_keys": [KEY]}, limits={"max_stream_s": 30.0}
    ) as server:
        session = await run_session(
            url(server.port, f"?api_key={KEY}"),
            {**START, "sample_rate": 48000, "channels": 2},
            data,
            pace_s=0.0,
            end=END,
        )
        text = check_segments(session.messages)
        print(
            f"tutorial 48k stereo fast: WER {wer(reference, text):.1%}, plain {plain_wer(audio, reference):.1%}"
        )
        assert "summary" not in [m["type"] for m in session.messages]
        assert session.messages[-1]["status"] == "queued"  # no worker here: the job waits
        assert wer(reference, text) <= plain_wer(audio, reference) + LIVE_SLACK, text

        for query in ("", "?api_key=wrong", "?token=1.2.3"):
            refused = await run_session(url(server.port, query), START, end=END)
            assert refused.error["code"] == "UNAUTHORIZED" and refused.close_code == 4001
        bearer = Session()
        async with connect(url(server.port), additional_headers=BEARER) as ws:
            reader = asyncio.create_task(receive_all(ws, bearer))
            await ws.send(json.dumps(START))
            await ws.send(json.dumps(END))
            await reader
        assert [m["type"] for m in bearer.messages] == ["started", "completed"]

        cases: list[tuple[Any, str, int, str]] = [
            ({**START, "summarize": True}, "INVALID_CONFIG", 1003, "summaries are off"),
            ({**START, "sample_rate": 1_000_000}, "INVALID_CONFIG", 1003, "sample_rate"),
            ({**START, "channels": 3}, "INVALID_CONFIG", 1003, "channels"),
            (np.zeros(160, "<i2").tobytes(), "PROTOCOL", 1008, "binary audio before"),
            ({"type": "hello"}, "PROTOCOL", 1008, "must be 'start'"),
        ]
        for start, code, close_code, words in cases:
            bad = await run_session(url(server.port, f"?api_key={KEY}"), start, end=END)
            assert bad.error["code"] == code and words in bad.error["message"], bad.messages
            assert bad.close_code == close_code

        # 35 s of audio into a 30 s session: the error, then the finals and completed
        long = np.concatenate([audio, audio, audio])[: 35 * 16000]
        capped = await run_session(
            url(server.port, f"?api_key={KEY}"), START, pieces(long.tobytes(), 32000)
        )
        # a partial of the first seconds may come before the cap is reached; nothing else
        kinds = [m["type"] for m in capped.messages if m["type"] != "partial"]
        assert kinds[:2] == ["started", "error"] and kinds[-1] == "completed", kinds
        assert "final" in kinds, kinds
        assert capped.error["code"] == "MAX_DURATION_REACHED" and capped.close_code == 4002
        assert capped.messages[-1]["streamed_seconds"] == 30.0
