"""``WS /api/v1/transcription/stream``: the live protocol document's own example session, its
frames in order, its error codes, and the session saved as a normal job."""

from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.scoring import wer
from protocol.frames import Word
from tests.compat_stream_helpers import LIVE_SLACK, pieces, plain_wer, saved_job, speech
from tests.listen_helpers import eventually, listen_server, run_session

KEY = "ap_your_key"
# the document's start frame, verbatim
START = {"type": "start", "language": "en", "diarize": False, "sample_rate": 16000, "channels": 1}
END = {"type": "end"}
CHUNK = 3200  # 100 ms, as the document suggests


def url(port: int, query: str) -> str:
    return f"ws://127.0.0.1:{port}/api/v1/transcription/stream{query}"


def check_session(messages: list[dict[str, Any]], seconds: float) -> str:
    """Every documented field, in order; the text of the finals."""
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "ready" and kinds[-1] == "completed", kinds
    assert {"partial", "final", "usage"} <= set(kinds), kinds
    ready, completed = messages[0], messages[-1]
    assert ready["job_id"] and ready["session_id"] and ready["max_duration_seconds"] > 0
    streamed = 0.0
    for i, message in enumerate(messages):
        if message["type"] == "partial":
            assert isinstance(message["text"], str)
        elif message["type"] == "final":
            assert message["speech_final"] is True
            if message["text"].strip():
                assert message["words"], message
            for word in message["words"]:
                Word.model_validate(word)
            usage = messages[i + 1]
            assert usage["type"] == "usage", "a usage frame follows each final"
            assert usage["credits_used"] == 0 and usage["streamed_seconds"] >= streamed
            streamed = usage["streamed_seconds"]
    assert completed["job_id"] == ready["job_id"] and completed["credits_used"] == 0
    assert abs(completed["streamed_seconds"] - seconds) < 0.05
    assert completed["transcript_path"] == f"/v1/transcripts/{ready['job_id']}"
    return " ".join(m["text"] for m in messages if m["type"] == "final")


async def test_the_documented_session_in_real_time_and_faster(
    nats_url: str, tmp_path: Path
) -> None:
    audio, reference = speech(3)
    data = pieces(audio.astype("<i2").tobytes(), CHUNK)
    plain = plain_wer(audio, reference)
    seconds = audio.size / 16000
    async with listen_server(
        nats_url, tmp_path, api={"api_keys": [KEY]}, postcall={"run_worker": True}
    ) as server:
        for pace in (0.1, 0.02):  # real time, then five times real time
            session = await run_session(
                url(server.port, f"?api_key={KEY}"), START, data, pace_s=pace, end=END
            )
            assert session.close_code == 1000
            text = check_session(session.messages, seconds)
            print(f"live protocol pace {pace}: WER {wer(reference, text):.1%}, plain {plain:.1%}")
            assert wer(reference, text) <= plain + LIVE_SLACK, (pace, text)
            job_id = session.messages[0]["job_id"]
            body = await saved_job(server.http_url, job_id, {"Authorization": f"Bearer {KEY}"})
            assert body["status"] == "completed", body
            saved = " ".join(s["text"] for s in body["transcript"]["segments"])
            assert wer(reference, saved) <= plain + LIVE_SLACK, saved
            async with httpx.AsyncClient(base_url=server.http_url) as client:
                vtt = await client.get(
                    f"{session.messages[-1]['transcript_path']}.vtt",
                    headers={"Authorization": f"Bearer {KEY}"},
                )
                assert vtt.status_code == 200 and vtt.text.startswith("WEBVTT")


async def test_documented_error_codes(nats_url: str, tmp_path: Path) -> None:
    silence = np.zeros(1600, "<i2").tobytes()
    async with listen_server(
        nats_url,
        tmp_path,
        api={"api_keys": [KEY]},
        limits={"max_stream_s": 2.0},
    ) as server:
        good = url(server.port, f"?api_key={KEY}")
        cases: list[tuple[Any, int, str]] = [
            ({**START, "sample_rate": 48000}, 1003, "sample_rate"),
            ({**START, "channels": 2}, 1003, "channels"),
            ({**START, "sample_rate": "fast"}, 1003, "16000 Hz, mono"),
            ({**START, "language": "xx"}, 1003, "language 'xx'"),
            ("not json", 1008, "JSON"),
            ({"type": "hello"}, 1008, "must be 'start'"),
            (silence, 1008, "binary audio before the start"),
        ]
        for start, close_code, words in cases:
            session = await run_session(good, start, end=END)
            assert session.error["code"] == "INVALID_CONFIG", (start, session.messages)
            assert words in session.error["message"], session.error
            assert session.close_code == close_code

        for query in ("", "?api_key=wrong", "?token=123.abc.def"):
            session = await run_session(url(server.port, query), START, end=END)
            assert session.error["code"] == "UNAUTHORIZED" and session.close_code == 4001
        async with httpx.AsyncClient(base_url=server.http_url) as client:
            issued = await client.post(
                "/v1/listen/token", headers={"Authorization": f"Bearer {KEY}"}
            )
        token = issued.json()["token"]
        session = await run_session(url(server.port, f"?token={token}"), START, end=END)
        assert [m["type"] for m in session.messages] == ["ready", "completed"]

        # 3 s of speech into a 2 s session: the error first, then it is finalized and saved
        audio, _ = speech(1)
        session = await run_session(good, START, pieces(audio[:48000].tobytes(), CHUNK))
        kinds = [m["type"] for m in session.messages]
        assert kinds[0] == "ready" and kinds[1] == "error" and kinds[-1] == "completed", kinds
        assert session.error["code"] == "MAX_DURATION_REACHED"
        assert session.messages[-1]["streamed_seconds"] == 2.0
        assert session.close_code == 4002
        job_id = session.messages[0]["job_id"]
        async with httpx.AsyncClient(
            base_url=server.http_url, headers={"Authorization": f"Bearer {KEY}"}
        ) as client:
            assert (await client.get(f"/v1/transcripts/{job_id}")).status_code == 200
        await eventually(lambda: server.admission.active() == 0)


async def test_recognition_falling_behind_is_an_upstream_error_and_the_session_goes_on(
    nats_url: str, tmp_path: Path
) -> None:
    audio, _ = speech(4)
    async with listen_server(nats_url, tmp_path, live={"input_queue_s": 0.5}) as server:
        session = await run_session(
            url(server.port, ""), START, pieces(audio.tobytes(), 64000), end=END
        )
    errors = session.of("error")
    assert errors and errors[0]["code"] == "UPSTREAM_ERROR", session.messages
    assert "behind" in errors[0]["message"]
    assert session.messages[-1]["type"] == "completed" and session.close_code == 1000
