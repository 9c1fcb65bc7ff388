"""The Deepgram-shaped live WebSocket, driven by the official ``deepgram-sdk`` client with only
its base URL changed, on LibriVox speech."""

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from deepgram import AsyncDeepgramClient
from deepgram.core.api_error import ApiError
from deepgram.environment import DeepgramClientEnvironment
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from api.compat.deepgram import G711, DeepgramOptions
from bench.scoring import wer
from tests.compat_stream_helpers import LIVE_SLACK, pieces, plain_wer, saved_job, speech
from tests.listen_helpers import Session, listen_server, receive_all, run_session

KEY = "dg-key"


def environment(port: int) -> DeepgramClientEnvironment:
    return DeepgramClientEnvironment(
        base=f"http://127.0.0.1:{port}/deepgram",
        production=f"ws://127.0.0.1:{port}/deepgram",
        agent=f"ws://127.0.0.1:{port}/deepgram",
        agent_rest=f"http://127.0.0.1:{port}/deepgram",
    )


def as_dict(message: Any) -> dict[str, Any]:
    data: dict[str, Any] = message.dict() if hasattr(message, "dict") else dict(message)
    return data


async def sdk_session(
    port: int, audio: bytes, chunk: int, pace_s: float, api_key: str = KEY, **options: Any
) -> list[dict[str, Any]]:
    """Stream ``audio`` through the SDK, then KeepAlive, Finalize, CloseStream; every message."""
    client = AsyncDeepgramClient(api_key=api_key, environment=environment(port))
    received: list[dict[str, Any]] = []
    async with client.listen.v1.connect(model="nova-3", **options) as socket:
        finalized = asyncio.Event()

        async def read() -> None:
            async for message in socket:
                received.append(as_dict(message))
                if received[-1].get("from_finalize"):
                    finalized.set()

        reader = asyncio.create_task(read())
        for piece in pieces(audio, chunk):
            await socket.send_media(piece)
            await asyncio.sleep(pace_s)
        await socket.send_keep_alive()
        await socket.send_finalize()
        async with asyncio.timeout(120):
            await finalized.wait()
        await socket.send_close_stream()
        async with asyncio.timeout(120):
            await reader
    return received


def finals_text(received: list[dict[str, Any]]) -> str:
    return " ".join(
        m["channel"]["alternatives"][0]["transcript"]
        for m in received
        if m["type"] == "Results" and m["is_final"]
    )


async def test_sdk_streams_speech_and_gets_results_metadata_and_a_saved_job(
    nats_url: str, tmp_path: Path
) -> None:
    audio, reference = speech(4)
    data = audio.astype("<i2").tobytes()
    chunk = 3200  # 100 ms
    async with listen_server(
        nats_url, tmp_path, api={"api_keys": [KEY]}, postcall={"run_worker": True}
    ) as server:
        received = await sdk_session(
            server.port,
            data,
            chunk,
            pace_s=0.1 / 3,  # three times real time
            encoding="linear16",
            sample_rate=16000,
            channels=1,
            interim_results="true",
            punctuate="true",
            diarize="true",
            endpointing=300,
            utterance_end_ms=1000,
            vad_events="true",
        )
        kinds = [m["type"] for m in received]
        assert kinds[-1] == "Metadata" and kinds.count("Metadata") == 1, kinds
        assert {"Results", "SpeechStarted", "UtteranceEnd"} <= set(kinds), kinds
        results = [m for m in received if m["type"] == "Results"]
        interims = [m for m in results if not m["is_final"]]
        finals = [m for m in results if m["is_final"] and not m["from_finalize"]]
        assert interims and finals
        for m in results:
            assert m["channel_index"] == [0, 1]
            assert m["metadata"]["request_id"] == received[-1]["request_id"]
            assert m["metadata"]["model_info"]["name"] == "whisper-tiny.en"
            assert m["duration"] >= 0 and m["start"] >= 0
        for m in finals:
            assert m["speech_final"] is True
            alternative = m["channel"]["alternatives"][0]
            if alternative["transcript"]:
                assert 0 < alternative["confidence"] <= 1
                for word in alternative["words"]:
                    assert word["speaker"] == 0
                    assert word["punctuated_word"].lower().startswith(word["word"][:1])
                    assert word["word"] == word["word"].lower()
                    assert (
                        m["start"]
                        <= word["start"]
                        <= word["end"]
                        <= m["start"] + m["duration"] + 0.01
                    )
        # SpeechStarted comes before the first result of its utterance; UtteranceEnd after a final
        first_started = kinds.index("SpeechStarted")
        assert first_started < kinds.index("Results")
        ends = [i for i, k in enumerate(kinds) if k == "UtteranceEnd"]
        assert all(
            received[i - 1]["type"] == "Results" and received[i - 1]["is_final"] for i in ends
        )
        finalized = [m for m in results if m["from_finalize"]]
        assert len(finalized) == 1 and finalized[0]["speech_final"] is False

        hypothesis = finals_text(received)
        print(
            f"deepgram linear16 3x: WER {wer(reference, hypothesis):.1%}, plain {plain_wer(audio, reference):.1%}"
        )
        assert hypothesis[:1].isupper() and any(c in hypothesis for c in ".,?!"), hypothesis
        assert wer(reference, hypothesis) <= plain_wer(audio, reference) + LIVE_SLACK, hypothesis

        metadata = received[-1]
        assert metadata["sha256"] == hashlib.sha256(data).hexdigest()
        assert abs(metadata["duration"] - audio.size / 16000) < 0.05
        assert metadata["channels"] == 1 and metadata["model_info"]
        job_id = metadata["extra"]["job_id"]
        body = await saved_job(server.http_url, job_id, {"Authorization": f"Bearer {KEY}"})
        assert body["status"] == "completed", body
        text = " ".join(s["text"] for s in body["transcript"]["segments"])
        assert wer(reference, text) <= plain_wer(audio, reference) + LIVE_SLACK, text


def mulaw_8k(audio: np.ndarray) -> bytes:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=8000)
    frame = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 16000
    out = [
        f.to_ndarray().reshape(-1) for f in [*resampler.resample(frame), *resampler.resample(None)]
    ]
    samples = np.concatenate(out).astype(np.int32)
    table = G711["mulaw"].astype(np.int32)
    order = np.argsort(table)
    at = np.clip(np.searchsorted(table[order], samples), 1, 255)
    below, above = order[at - 1], order[at]
    nearest = np.where(samples - table[below] <= table[above] - samples, below, above)
    return nearest.astype(np.uint8).tobytes()


async def test_mulaw_at_8k_unpunctuated_as_fast_as_it_goes(nats_url: str, tmp_path: Path) -> None:
    audio, reference = speech(2)
    data = mulaw_8k(audio)
    async with listen_server(nats_url, tmp_path, api={"api_keys": [KEY]}) as server:
        received = await sdk_session(
            server.port, data, 800, pace_s=0.0, encoding="mulaw", sample_rate=8000
        )
    results = [m for m in received if m["type"] == "Results"]
    assert all(m["is_final"] for m in results), "interim_results is off by default"
    assert "SpeechStarted" not in [m["type"] for m in received]
    hypothesis = finals_text(received)
    assert hypothesis == hypothesis.lower() and not any(c in hypothesis for c in ".,?!")
    for m in results:
        for word in m["channel"]["alternatives"][0]["words"]:
            assert "punctuated_word" not in word and "speaker" not in word
    print(
        f"deepgram mulaw 8k: WER {wer(reference, hypothesis):.1%}, plain 16k {plain_wer(audio, reference):.1%}"
    )
    # telephone bandwidth costs some words; a lost sentence costs more than this
    assert wer(reference, hypothesis) <= plain_wer(audio, reference) + 0.2, hypothesis
    assert abs(received[-1]["duration"] - len(data) / 8000) < 0.05


async def test_refusals_in_deepgram_shapes_and_v1_listen_is_untouched(
    nats_url: str, tmp_path: Path
) -> None:
    async with listen_server(nats_url, tmp_path, api={"api_keys": [KEY]}) as server:
        for key in ("wrong", ""):
            with pytest.raises(ApiError) as refused:
                await sdk_session(
                    server.port, b"", 1, 0.0, api_key=key, encoding="linear16", sample_rate=16000
                )
            assert refused.value.status_code == 401
        base = f"ws://127.0.0.1:{server.port}/deepgram/v1/listen"
        token = {"Authorization": f"Token {KEY}"}
        for query, words in [
            ("?sample_rate=16000", "encoding is required"),
            ("?encoding=opus&sample_rate=16000", "encoding 'opus' is not supported"),
            ("?encoding=linear16", "sample_rate is required"),
            ("?encoding=linear16&sample_rate=100", "sample_rate: 100 is outside"),
            ("?encoding=linear16&sample_rate=16000&interim_results=maybe", "interim_results"),
            ("?encoding=linear16&sample_rate=16000&multichannel=true", "multichannel"),
        ]:
            with pytest.raises(InvalidStatus) as bad:
                async with connect(base + query, additional_headers=token):
                    pass
            response = bad.value.response
            assert response.status_code == 400, query
            body = json.loads(response.body or b"{}")
            assert body["err_code"] == "Bad Request" and words in body["err_msg"], body
            assert body["request_id"] == response.headers["dg-request-id"]

        ok = base + "?encoding=linear16&sample_rate=16000"
        silence = np.zeros(8000, "<i2").tobytes()
        for headers, subprotocols, query in [
            (token, None, ""),
            ({"Authorization": f"Bearer {KEY}"}, None, ""),
            ({}, ["token", KEY], ""),
            ({}, None, f"&api_key={KEY}"),
        ]:
            session = Session()
            async with connect(
                ok + query, additional_headers=headers, subprotocols=subprotocols
            ) as ws:  # type: ignore[arg-type]
                reader = asyncio.create_task(receive_all(ws, session))
                await ws.send(silence)
                await ws.send(json.dumps({"type": "CloseStream"}))
                await reader
            assert [m["type"] for m in session.messages] == ["Metadata"], session.messages
            assert session.close_code == 1000
            assert session.messages[0]["duration"] == 0.5

        for message in ("not json", json.dumps({"type": "Configure"})):
            session = Session()
            async with connect(ok, additional_headers=token) as ws:
                reader = asyncio.create_task(receive_all(ws, session))
                await ws.send(message)
                await reader
            error = session.of("Error")[0]
            assert error["variant"] == "SchemaError" and error["description"], error
            assert session.close_code == 1008

        # roomscribe's own route keeps its protocol: binary before start is a PROTOCOL error
        own = await run_session(f"{server.ws_url}?api_key={KEY}", silence)
        assert own.error["code"] == "PROTOCOL" and own.close_code == 1008


def test_g711_tables_and_query_options() -> None:
    # ITU-T G.711 code points: silence, the smallest and the largest steps of each law
    assert list(G711["mulaw"][[0xFF, 0x7F, 0xFE, 0x7E, 0x00, 0x80]]) == [0, 0, 8, -8, -32124, 32124]
    assert list(G711["alaw"][[0xD5, 0x55, 0x2A, 0xAA]]) == [8, -8, -32256, 32256]
    options = DeepgramOptions.parse(
        {
            "encoding": "alaw",
            "sample_rate": "8000",
            "language": "en-US",
            "smart_format": "True",
            "endpointing": "false",
            "utterance_end_ms": "1000",
        }
    )
    assert (options.language, options.punctuate, options.endpointing) == ("en", True, False)
    assert options.utterance_end_ms == 1000 and not options.interim_results
    assert (
        DeepgramOptions.parse(
            {"encoding": "linear16", "sample_rate": "16000", "language": "multi"}
        ).language
        == "auto"
    )
