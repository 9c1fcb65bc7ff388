"""The open API reference (seed 001) against the served app, on real speech: its example
requests, every documented field, status and error."""

import asyncio
import json
import re
import wave
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from api.compat import open_reference
from engines.diarization_export import ExportUnavailableError, prepare_diarization
from tests.api_helpers import make_settings, wer
from tests.conftest import librivox_files, librivox_reference, read_wav16
from tests.fake_llm import Reply, fake_llm
from tests.pyannote_sample import cache_root, pyannote_sample
from tests.service_helpers import served

# the reference's example bodies, as printed
SUMMARY_EXAMPLE = {
    "transcript": [{"start": 0.0, "end": 1.2, "text": "..."}],
    "full_text": "optional full transcript text",
    "model_name": "gpt-3.5-turbo",
    "max_length": 500,
    "format": "paragraph",
}
CHAT_EXAMPLE = {
    "transcript": [{"start": 0.0, "end": 1.2, "text": "..."}],
    "full_text": "optional full transcript text",
    "messages": [{"role": "user", "content": "What did speaker 2 request?"}],
    "model_name": "gpt-3.5-turbo",
    "temperature": 0.7,
    "max_tokens": 500,
}
SEGMENT_FROM_FULL_EXAMPLE = {
    "segment_id": "seg-1",
    "start_time": 30.0,
    "end_time": 44.0,
    "model_name": "whisper-large-v3-turbo",
    "language": "en",
}
DISPLAY = re.compile(r"\d{2}:\d{2}:\d{2}\.\d{3}")
GAP_S = 0.8


@pytest.fixture(scope="session")
def diarization_models() -> Path:
    try:
        return prepare_diarization(cache_root() / "diarization-models")
    except ExportUnavailableError as exc:
        pytest.skip(f"diarization models are not prepared and cannot be exported here: {exc}")


def _write_wav(path: Path, samples: np.ndarray) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(samples.astype("<i2").tobytes())


def _meeting(tmp_path: Path) -> tuple[Path, list[tuple[float, float, str]]]:
    """Three LibriVox utterances with pauses between; their spans and texts."""
    references = librivox_reference()
    pieces, spans, at = [], [], 0.0
    gap = np.zeros(int(GAP_S * 16000), dtype=np.int16)
    for wav in librivox_files()[:3]:
        samples = read_wav16(wav)
        spans.append((at, at + samples.size / 16000, references[wav.stem]))
        pieces += [samples, gap]
        at += samples.size / 16000 + GAP_S
    path = tmp_path / "meeting.wav"
    _write_wav(path, np.concatenate(pieces))
    return path, spans


def _headers_ok(response: httpx.Response) -> None:
    assert response.headers["X-Request-ID"]
    assert float(response.headers["X-Process-Time-Ms"]) >= 0


def _detail(response: httpx.Response, status: int) -> Any:
    assert response.status_code == status, response.text
    _headers_ok(response)
    body = response.json()
    assert body["detail"], body
    return body["detail"]


async def _poll(client: httpx.AsyncClient, path: str, limit_s: float = 240) -> dict[str, Any]:
    async with asyncio.timeout(limit_s):
        while True:
            body: dict[str, Any] = (await client.get(path)).json()
            if body["status"] != "processing":
                return body
            await asyncio.sleep(0.2)


async def _follow(url: str) -> tuple[list[dict[str, Any]], int | None]:
    messages = []
    async with asyncio.timeout(240), connect(url) as ws:
        try:
            async for raw in ws:
                messages.append(json.loads(raw))
        except ConnectionClosed:
            pass
        return messages, ws.close_code


async def test_transcribe_result_live_debug_and_retranslate(
    nats_url: str, tmp_path: Path, diarization_models: Path
) -> None:
    meeting, spans = _meeting(tmp_path)
    everything = " ".join(text for _, _, text in spans)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "diarization").symlink_to(diarization_models)
    settings = make_settings(nats_url, tmp_path)
    async with (
        served(settings) as service,
        httpx.AsyncClient(base_url=service.http_url, timeout=60) as client,
    ):
        listed = await client.get("/api/transcribe/models")
        _headers_ok(listed)
        models = {m["name"]: m for m in listed.json()["models"]}
        tiny = models["tiny.en"]
        assert tiny["full_name"] == "openai/whisper-tiny.en"
        assert tiny["is_downloaded"] is True and tiny["size_mb"] > 1
        assert tiny["description"]
        assert all(isinstance(m["is_downloaded"], bool) for m in models.values())

        started = await client.post(
            "/api/transcribe/",
            files={"file": ("meeting.wav", meeting.read_bytes(), "audio/wav")},
            data={"model_name": "tiny.en", "language": "en"},
        )
        assert started.status_code == 200, started.text
        _headers_ok(started)
        body = started.json()
        assert body["status"] == "processing" and body["message"]
        job_id = body["job_id"]
        record = (await client.get(f"/v1/transcripts/{job_id}")).json()
        assert record["options"]["diarize"] is True  # the documented default
        assert record["options"]["model"] == "whisper-tiny.en"

        live, code = await _follow(f"ws://127.0.0.1:{service.port}/api/transcribe/live/{job_id}")
        assert code == 1000
        statuses = [m for m in live if m["type"] == "status"]
        produced = [m for m in live if m["type"] == "segment"]
        assert statuses[-1]["status"] == "completed" and statuses[-1]["progress"] == 100
        assert live[-1] == statuses[-1]
        for message in statuses:
            assert message["status"] in ("processing", "completed")
            assert 0 <= message["progress"] <= 100 and isinstance(message["message"], str)
            info = message["chunk_info"]
            assert set(info) == {"current_chunk", "total_chunks", "chunk_progress"}
            assert info["current_chunk"] <= info["total_chunks"]
        assert produced and all(m["text"].strip() for m in produced)

        status = (await client.get(f"/api/transcribe/status/{job_id}")).json()
        assert set(status) == {"job_id", "status", "message", "progress", "updated_at"}
        assert (status["job_id"], status["status"], status["progress"]) == (
            job_id,
            "completed",
            100,
        )
        gone = await client.get("/api/transcribe/status/tr_000000000000deadbeef")
        assert gone.status_code == 200
        assert gone.json()["status"] == "not_found" and gone.json()["progress"] == 0
        assert gone.json()["message"] == "Transcription job not found or expired"
        assert gone.json()["updated_at"] > 0

        jobs = (await client.get("/api/transcribe/jobs")).json()
        assert jobs["count"] == len(jobs["jobs"]) == 1
        (listed_job,) = jobs["jobs"]
        assert listed_job["job_id"] == job_id and listed_job["status"] == "completed"
        assert {"progress", "updated_at", "message"} <= set(listed_job)

        result = (await client.get(f"/api/transcribe/result/{job_id}")).json()
        assert set(result) == {"segments", "text", "language", "audio_duration"}
        assert result["language"] == "en"
        assert abs(result["audio_duration"] - (spans[-1][1] + GAP_S)) < 0.1
        assert wer(everything, result["text"]) <= 0.15, result["text"]
        assert [{k: v for k, v in s.items() if k != "type"} for s in produced] == result["segments"]
        for segment in result["segments"]:
            assert set(segment) == {
                "start",
                "end",
                "text",
                "speaker",
                "speaker_confidence",
                "start_display",
                "end_display",
            }
            assert segment["speaker"] == "SPEAKER_1"
            assert 0.5 <= segment["speaker_confidence"] <= 1.0
            for key in ("start", "end"):
                shown = segment[f"{key}_display"]
                assert DISPLAY.fullmatch(shown), shown
                h, m, s = shown.split(":")
                assert abs(int(h) * 3600 + int(m) * 60 + float(s) - segment[key]) < 0.001

        debug = (await client.get(f"/api/transcribe/debug/{job_id}")).json()
        assert debug["job_id"] == job_id and debug["status"] == "completed"
        assert debug["cached_segments"] >= len(result["segments"])
        assert debug["latest_time"] == max(s["end"] for s in result["segments"])
        assert "transcript.json" in debug["stored_files"] and "turns.json" in debug["stored_files"]

        # the reference's example: a model this service does not have, past the audio's end
        example = await client.post(
            "/api/retranslate/segment-from-full",
            params={"job_id": job_id},
            json=SEGMENT_FROM_FULL_EXAMPLE,
        )
        assert "whisper-large-v3-turbo" in _detail(example, 400)
        past = {**SEGMENT_FROM_FULL_EXAMPLE, "model_name": "tiny.en"}
        assert "past the audio" in _detail(
            await client.post(
                "/api/retranslate/segment-from-full", params={"job_id": job_id}, json=past
            ),
            400,
        )
        start, end, text = spans[2]
        again = await client.post(
            "/api/retranslate/segment-from-full",
            params={"job_id": job_id},
            json={**past, "start_time": start, "end_time": end + 0.3},
        )
        assert again.status_code == 200, again.text
        redone = again.json()
        assert set(redone) == {"segment_id", "text", "confidence", "speaker", "model_used"}
        assert redone["segment_id"] == "seg-1" and redone["model_used"] == "tiny.en"
        assert redone["speaker"] == "SPEAKER_1"
        assert 0.3 < redone["confidence"] <= 1.0
        assert wer(text, redone["text"]) <= 0.2, redone["text"]

        clip_wav = librivox_files()[3]
        clip = await client.post(
            "/api/retranslate/segment",
            files={"file": ("clip.wav", clip_wav.read_bytes(), "audio/wav")},
            data={"segment_id": "seg-7", "start_time": "12.5", "end_time": "18.6"},
        )
        assert clip.status_code == 200, clip.text
        answered = clip.json()
        assert (answered["segment_id"], answered["speaker"]) == ("seg-7", None)
        assert answered["model_used"] == "tiny.en"
        assert wer(librivox_reference()[clip_wav.stem], answered["text"]) <= 0.2
        # the re-recognitions leave no jobs behind
        assert (await client.get("/api/transcribe/jobs")).json()["count"] == 1

        assert "not found" in _detail(
            await client.get("/api/transcribe/result/tr_000000000000deadbeef"), 404
        )
        assert _detail(
            await client.post(
                "/api/retranslate/segment-from-full",
                params={"job_id": "tr_000000000000deadbeef"},
                json={**past, "end_time": 31.0},
            ),
            404,
        )
        assert _detail(await client.get("/api/transcribe/debug/nope"), 404)


async def test_bad_input_gets_detail_and_the_service_goes_on(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wav = librivox_files()[0]
    settings = make_settings(nats_url, tmp_path)
    async with (
        served(settings) as service,
        httpx.AsyncClient(base_url=service.http_url, timeout=60) as client,
    ):
        text_file = await client.post(
            "/api/transcribe/", files={"file": ("notes.txt", b"hello" * 20, "text/plain")}
        )
        assert "not audio" in _detail(text_file, 400)
        assert _detail(await client.post("/api/transcribe/", data={"language": "en"}), 400)
        assert _detail(await client.post("/api/transcribe/", json={"file": "x"}), 400)
        bad_flag = await client.post(
            "/api/transcribe/",
            files={"file": ("a.wav", wav.read_bytes(), "audio/wav")},
            data={"diarize": "perhaps"},
        )
        assert "diarize" in _detail(bad_flag, 400)
        empty_flag = await client.post(
            "/api/transcribe/",
            files={"file": ("a.wav", wav.read_bytes(), "audio/wav")},
            data={"diarize": ""},
        )
        assert "diarize: expected true or false, got ''" in _detail(empty_flag, 400)
        bad_model = await client.post(
            "/api/transcribe/",
            files={"file": ("a.wav", wav.read_bytes(), "audio/wav")},
            data={"model_name": "no-such-model"},
        )
        assert "no-such-model" in _detail(bad_model, 400)
        bad_language = await client.post(
            "/api/transcribe/",
            files={"file": ("a.wav", wav.read_bytes(), "audio/wav")},
            data={"model_name": "tiny.en", "language": "fr"},
        )
        assert _detail(bad_language, 400)

        no_segment = await client.post(
            "/api/retranslate/segment", files={"file": ("a.wav", wav.read_bytes(), "audio/wav")}
        )
        assert "segment_id" in _detail(no_segment, 400)
        backwards = await client.post(
            "/api/retranslate/segment",
            files={"file": ("a.wav", wav.read_bytes(), "audio/wav")},
            data={"segment_id": "s", "start_time": "5", "end_time": "2"},
        )
        assert "end_time" in _detail(backwards, 400)
        empty_start = await client.post(
            "/api/retranslate/segment",
            files={"file": ("a.wav", wav.read_bytes(), "audio/wav")},
            data={"segment_id": "s", "start_time": ""},
        )
        assert "start_time: expected seconds, got ''" in _detail(empty_start, 400)
        noise = await client.post(
            "/api/retranslate/segment",
            files={"file": ("a.wav", b"RIFF not really", "audio/wav")},
            data={"segment_id": "s"},
        )
        assert _detail(noise, 400)
        assert _detail(
            await client.post(
                "/api/retranslate/segment-from-full",
                params={"job_id": "x"},
                content=b"{",
                headers={"Content-Type": "application/json"},
            ),
            422,
        )

        not_utf8 = await client.post(
            "/api/chat/",
            content=b'{"messages": "\xf3"}',
            headers={"Content-Type": "application/json"},
        )
        assert _detail(not_utf8, 400)
        chat_empty = await client.post("/api/chat/", json={**CHAT_EXAMPLE, "messages": []})
        problems = _detail(chat_empty, 422)
        assert isinstance(problems, list) and problems[0]["loc"][-1] == "messages"
        assert chat_empty.json()["error"]["code"] == "INVALID_REQUEST"
        nothing = await client.post(
            "/api/chat/", json={"messages": CHAT_EXAMPLE["messages"], "transcript": []}
        )
        assert "transcript" in _detail(nothing, 400)
        bad_format = await client.post("/api/summary/", json={**SUMMARY_EXAMPLE, "format": "x"})
        assert _detail(bad_format, 422)
        boolean_end = await client.post(
            "/api/summary/",
            json={**SUMMARY_EXAMPLE, "transcript": [{"start": 0.0, "end": True, "text": "."}]},
        )
        [refused] = _detail(boolean_end, 422)
        assert refused["loc"] == ["body", "transcript", 0, "end"], refused
        assert refused["msg"] == "Input should be a valid number"
        boolean_tokens = await client.post("/api/chat/", json={**CHAT_EXAMPLE, "max_tokens": True})
        [refused] = _detail(boolean_tokens, 422)
        assert refused["loc"] == ["body", "max_tokens"], refused
        assert refused["msg"] == "Input should be a valid integer"
        assert _detail(await client.get("/api/summary/tr_000000000000deadbeef"), 404)
        assert _detail(await client.get("/api/summary/status/tr_000000000000deadbeef"), 404)

        def broken(_: Path) -> None:
            raise RuntimeError("disk on fire")

        monkeypatch.setattr(open_reference, "list_models", broken)
        crashed = await client.get("/api/transcribe/models")
        request_id = crashed.headers["X-Request-ID"]
        assert request_id in _detail(crashed, 500)
        assert crashed.json()["error"]["code"] == "INTERNAL"
        monkeypatch.undo()

        alive = await client.post(
            "/api/transcribe/",
            files={"file": ("a.wav", wav.read_bytes(), "audio/wav")},
            data={"diarize": "false"},
        )
        assert alive.status_code == 200
        done = await _poll(client, f"/api/transcribe/status/{alive.json()['job_id']}")
        assert done["status"] == "completed", done
        result = (await client.get(f"/api/transcribe/result/{alive.json()['job_id']}")).json()
        assert wer(librivox_reference()[wav.stem], result["text"]) <= 0.15
        assert all(s["speaker_confidence"] is None for s in result["segments"])


async def test_summary_chat_metadata_and_health(nats_url: str, tmp_path: Path) -> None:
    references = librivox_reference()
    files = librivox_files()
    segments, at = [], 0.0
    for wav in files:
        seconds = wav.stat().st_size / 32000
        segments.append({"start": at, "end": at + seconds, "text": references[wav.stem]})
        at += seconds + 0.5
    settings = make_settings(nats_url, tmp_path, postcall={"run_worker": False})
    async with (
        served(settings) as service,
        httpx.AsyncClient(base_url=service.http_url, timeout=60) as client,
    ):
        example = await client.post("/api/summary/", json=SUMMARY_EXAMPLE)
        assert example.status_code == 200, example.text
        assert example.json()["status"] == "processing" and example.json()["message"]
        first = example.json()["job_id"]
        state = await _poll(client, f"/api/summary/status/{first}")
        assert set(state) == {"status", "message", "progress"}
        assert (state["status"], state["progress"]) == ("completed", 100)
        summary = (await client.get(f"/api/summary/{first}")).json()
        assert set(summary) == {"summary", "topics", "length", "model_used"}
        assert summary["model_used"] == "embedded"

        by_format = {}
        for style in ("paragraph", "bullet_points", "key_points"):
            started = await client.post(
                "/api/summary/",
                json={"transcript": segments, "format": style, "max_length": 40},
            )
            job_id = started.json()["job_id"]
            assert (await _poll(client, f"/api/summary/status/{job_id}"))["status"] == "completed"
            by_format[style] = (await client.get(f"/api/summary/{job_id}")).json()
        paragraph = by_format["paragraph"]
        assert paragraph["summary"] and "\n" not in paragraph["summary"]
        assert paragraph["length"] == len(paragraph["summary"].split()) <= 40
        said = set(" ".join(s["text"] for s in segments).split())
        assert set(re.sub(r"[^a-z' ]|\bs\d+:", " ", paragraph["summary"].lower()).split()) <= said
        bullets = by_format["bullet_points"]["summary"].splitlines()
        assert bullets and all(line.startswith("- ") for line in bullets)
        points = by_format["key_points"]["summary"].splitlines()
        assert points and all(re.match(r"\d+\. ", line) for line in points)
        assert by_format["key_points"]["length"] <= 40
        assert isinstance(by_format["paragraph"]["topics"], list)
        # a summary is a job of its own kind, not a transcription job
        stored = (await client.get(f"/v1/transcripts/{first}")).json()
        assert (stored["kind"], stored["status"], stored["transcript"]) == (
            "summary",
            "completed",
            None,
        )
        assert stored["results"] == ["summary.json"]
        assert (await client.get("/api/transcribe/jobs")).json()["count"] == 0
        assert (await client.get(f"/api/transcribe/status/{first}")).json()["status"] == (
            "not_found"
        )

        chat = await client.post("/api/chat/", json=CHAT_EXAMPLE)
        assert chat.status_code == 200, chat.text
        reply = chat.json()
        assert set(reply) == {"message", "model_used", "usage"}
        assert reply["message"]["role"] == "assistant" and reply["message"]["content"]
        assert reply["model_used"] == "embedded"
        usage = reply["usage"]
        assert usage["total"] == usage["prompt"] + usage["completion"] > 0
        asked = await client.post(
            "/api/chat/",
            json={
                **CHAT_EXAMPLE,
                "transcript": segments,
                "messages": [{"role": "user", "content": "Who had leisure to consider?"}],
                "max_tokens": 30,
            },
        )
        answer = asked.json()
        assert "dashwood" in answer["message"]["content"].lower()
        assert answer["usage"]["completion"] == len(answer["message"]["content"].split()) <= 30
        chat_models = (await client.get("/api/chat/models")).json()["models"]
        assert [m["id"] for m in chat_models] == ["embedded"]
        assert all(m["name"] and m["description"] for m in chat_models)

        health = await client.get("/health")
        _headers_ok(health)
        stamp = health.json()["timestamp"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp)
        assert health.json()["status"] == "ok"
        root = await client.get("/")
        _headers_ok(root)
        meta = root.json()
        assert meta["name"] == "roomscribe" and meta["version"]
        for path in ("/api/transcribe/", "/api/summary/", "/api/chat/", "/v1/transcripts"):
            assert path in meta["endpoints"]
        spec = (await client.get("/openapi.json")).json()["paths"]
        for path in (
            "/api/transcribe/models",
            "/api/transcribe/",
            "/api/transcribe/jobs",
            "/api/transcribe/status/{job_id}",
            "/api/transcribe/result/{job_id}",
            "/api/transcribe/debug/{job_id}",
            "/api/summary/",
            "/api/summary/{job_id}",
            "/api/summary/status/{job_id}",
            "/api/chat/models",
            "/api/chat/",
            "/api/retranslate/segment",
            "/api/retranslate/segment-from-full",
            "/",
        ):
            assert path in spec, path


async def test_api_keys_apply_to_every_route(nats_url: str, tmp_path: Path) -> None:
    settings = make_settings(
        nats_url, tmp_path, api={"api_keys": ["k1"]}, postcall={"run_worker": False}
    )
    async with (
        served(settings) as service,
        httpx.AsyncClient(base_url=service.http_url, timeout=60) as client,
    ):
        for method, path in (
            ("GET", "/api/transcribe/models"),
            ("POST", "/api/transcribe/"),
            ("GET", "/api/transcribe/jobs"),
            ("POST", "/api/summary/"),
            ("POST", "/api/chat/"),
            ("POST", "/api/retranslate/segment"),
            ("GET", "/"),
        ):
            denied = await client.request(method, path)
            assert denied.status_code == 401, path
            _headers_ok(denied)
        allowed = await client.get("/api/transcribe/jobs", headers={"Authorization": "Bearer k1"})
        assert allowed.json() == {"jobs": [], "count": 0}
        base = f"ws://127.0.0.1:{service.port}/api/transcribe/live/tr_000000000000deadbeef"
        refused, code = await _follow(base)
        assert code == 4001 and refused[0]["type"] == "error"
        missing, code = await _follow(f"{base}?api_key=k1")
        assert code == 4404 and missing[0]["status"] == "not_found"


async def test_chat_and_summary_through_the_configured_llm(nats_url: str, tmp_path: Path) -> None:
    references = librivox_reference()
    wav = librivox_files()[0]
    said = references[wav.stem]
    segments = [{"start": 0.0, "end": 5.6, "text": said}]

    def respond(body: dict[str, Any]) -> Reply:
        system = body["messages"][0]["content"]
        if "answer questions" in system:
            return Reply(
                json.dumps({"answer": "John Dashwood (at 0.0s).", "segment_ids": ["s0000"]})
            )
        item = {"text": "Dashwood weighs what he can do.", "start": 0.0, "end": 5.6}
        return Reply(json.dumps({"summary": [item], "topics": [{**item, "text": "Dashwood"}]}))

    with fake_llm() as llm:
        llm.respond = respond
        settings = make_settings(
            nats_url,
            tmp_path,
            postcall={"run_worker": False, "llm_base_url": llm.base_url, "llm_model": "test-model"},
        )
        async with (
            served(settings) as service,
            httpx.AsyncClient(base_url=service.http_url, timeout=60) as client,
        ):
            models = (await client.get("/api/chat/models")).json()["models"]
            assert [m["id"] for m in models] == ["test-model", "embedded"]
            chat = await client.post(
                "/api/chat/",
                json={**CHAT_EXAMPLE, "transcript": segments, "full_text": said},
            )
            reply = chat.json()
            assert reply["model_used"] == "test-model"
            assert reply["message"] == {"role": "assistant", "content": "John Dashwood (at 0.0s)."}
            assert reply["usage"]["completion"] == 4
            asked = llm.requests[-1][1]["messages"][-1]["content"]
            assert "What did speaker 2 request?" in asked and said in asked

            started = await client.post(
                "/api/summary/", json={**SUMMARY_EXAMPLE, "transcript": segments}
            )
            job_id = started.json()["job_id"]
            assert (await _poll(client, f"/api/summary/status/{job_id}"))["status"] == "completed"
            summary = (await client.get(f"/api/summary/{job_id}")).json()
            assert summary == {
                "summary": "Dashwood weighs what he can do.",
                "topics": ["Dashwood"],
                "length": 6,
                "model_used": "test-model",
            }


async def test_two_speakers_get_their_labels_and_confidence(
    nats_url: str, tmp_path: Path, diarization_models: Path
) -> None:
    sample = pyannote_sample()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "diarization").symlink_to(diarization_models)
    settings = make_settings(nats_url, tmp_path)
    async with (
        served(settings) as service,
        httpx.AsyncClient(base_url=service.http_url, timeout=60) as client,
    ):
        started = await client.post(
            "/api/transcribe/",
            files={"file": ("sample.wav", sample.wav.read_bytes(), "audio/wav")},
            data={"model_name": "tiny.en", "language": "en", "diarize": "true"},
        )
        job_id = started.json()["job_id"]
        done = await _poll(client, f"/api/transcribe/status/{job_id}", limit_s=300)
        assert done["status"] == "completed", done
        result = (await client.get(f"/api/transcribe/result/{job_id}")).json()
        core = (await client.get(f"/v1/transcripts/{job_id}")).json()["transcript"]
    assert {s["speaker"] for s in result["segments"]} == {"SPEAKER_1", "SPEAKER_2"}
    labels = {s["speaker"]: f"SPEAKER_{s['speaker'][1:]}" for s in core["segments"]}
    spoken = [s for s in core["segments"] if s["text"].strip()]
    assert [labels[s["speaker"]] for s in spoken] == [s["speaker"] for s in result["segments"]]
    confidences = [s["speaker_confidence"] for s in result["segments"]]
    assert all(0.0 <= c <= 1.0 for c in confidences)
    print(f"speaker_confidence mean {np.mean(confidences):.3f} min {min(confidences):.3f}")
    assert np.mean(confidences) >= 0.8
