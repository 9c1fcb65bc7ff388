"""OpenAI's ``POST /v1/audio/transcriptions`` through the official ``openai`` client pointed at the
production composition: every response format and timestamp granularity on LibriVox speech,
WER beside plain faster-whisper on the same audio, and the bad inputs it answers."""

import asyncio
import io
import wave
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import srt
import webvtt

from tests.api_helpers import make_settings, wer
from tests.conftest import LIBRIVOX, librivox_files, librivox_reference, read_wav16
from tests.service_helpers import served
from tests.test_accuracy import plain_text

pytestmark = pytest.mark.timeout(500)

KEY = "openai-key"
CLIP = "sense_and_sensibility_01_austen_64kb-0890"  # 5.3 s


def _wav(samples: np.ndarray) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(16_000)
        file.writeframes(samples.astype("<i2").tobytes())
    return out.getvalue()


def _error(exc: openai.APIStatusError) -> dict[str, Any]:
    assert isinstance(exc.body, dict), exc.body
    assert set(exc.body) == {"message", "type", "param", "code"}, exc.body
    return exc.body


async def test_openai_client_transcribes_in_every_format(nats_url: str, tmp_path: Path) -> None:
    path = LIBRIVOX / f"{CLIP}.wav"
    if not path.exists():
        pytest.skip("Debian package pocketsphinx-testdata is not installed")
    reference = librivox_reference()[CLIP]
    audio = path.read_bytes()
    seconds = read_wav16(path).size / 16_000
    refs = librivox_reference()
    longer = librivox_files()[:5]
    pause = np.zeros(8000, dtype=np.int16)
    passage = np.concatenate([part for f in longer for part in (read_wav16(f), pause)])
    passage_reference = " ".join(refs[f.stem] for f in longer)
    settings = make_settings(nats_url, tmp_path, api={"api_keys": [KEY]})
    async with served(settings) as service:
        client = openai.OpenAI(base_url=f"{service.http_url}/v1", api_key=KEY, max_retries=0)

        def create(**options: Any) -> Any:
            upload = options.pop("file", (path.name, audio, "audio/wav"))
            return client.audio.transcriptions.create(file=upload, **options)

        async def call(**options: Any) -> Any:
            return await asyncio.to_thread(create, **options)

        async def refused(**options: Any) -> openai.APIStatusError:
            with pytest.raises(openai.APIStatusError) as caught:
                await call(**options)
            return caught.value

        as_json = await call(model="whisper-1", language="en", prompt="Dashwood")
        as_text = await call(model="whisper-1", response_format="text")
        read = await call(model="whisper-1", file=("passage.wav", _wav(passage)))
        as_srt = await call(model="whisper-1", response_format="srt")
        as_vtt = await call(model="whisper-1", response_format="vtt")
        verbose = await call(model="whisper-tiny.en", response_format="verbose_json")
        words = await call(
            model="whisper-1", response_format="verbose_json", timestamp_granularities=["word"]
        )
        both = await call(
            model="whisper-1",
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
        raw = await asyncio.to_thread(
            lambda: client.audio.transcriptions.with_raw_response.create(
                file=(path.name, audio), model="whisper-1"
            )
        )
        job = raw.headers["x-roomscribe-job"]

        unknown_model = await refused(model="no-such-model")
        bad_format = await refused(model="whisper-1", response_format="mp3")
        not_audio = await refused(model="whisper-1", file=("notes.txt", b"not sound " * 200))
        granularity_alone = await refused(model="whisper-1", timestamp_granularities=["word"])
        bad_granularity = await refused(
            model="whisper-1", response_format="verbose_json", timestamp_granularities=["char"]
        )
        bad_language = await refused(model="whisper-1", language="xx")
        wrong = openai.OpenAI(base_url=f"{service.http_url}/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await asyncio.to_thread(
                lambda: wrong.audio.transcriptions.create(
                    file=(path.name, audio), model="whisper-1"
                )
            )
        async with httpx.AsyncClient(
            base_url=service.http_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
        ) as http:
            no_file = await http.post(
                "/v1/audio/transcriptions", files={"model": (None, "whisper-1")}
            )
            no_model = await http.post(
                "/v1/audio/transcriptions", files={"file": (path.name, audio)}
            )
            not_multipart = await http.post("/v1/audio/transcriptions", json={"model": "whisper-1"})
            empty_fields = [
                await http.post(
                    "/v1/audio/transcriptions",
                    files={"file": (path.name, audio), "model": (None, "whisper-1")},
                    data={name: ""},
                )
                for name in ("response_format", "temperature")
            ]
            stored = (await http.get(f"/v1/transcripts/{job}")).json()
            listed = (await http.get("/openapi.json")).json()["paths"]

    plain = await asyncio.to_thread(plain_text, "whisper-tiny.en", read_wav16(path))
    ours = wer(reference, as_json.text)
    print(f"openai client WER {ours:.3f}, plain faster-whisper {wer(reference, plain):.3f}")
    assert ours <= wer(reference, plain) + 0.05 and ours <= 0.3, (as_json.text, plain)
    plain_passage = await asyncio.to_thread(plain_text, "whisper-tiny.en", passage)
    ours_passage = wer(passage_reference, read.text)
    print(
        f"{passage.size / 16_000:.1f} s passage: openai client WER {ours_passage:.3f}, "
        f"plain faster-whisper {wer(passage_reference, plain_passage):.3f}"
    )
    assert ours_passage <= wer(passage_reference, plain_passage) + 0.02, (read.text, plain_passage)
    assert as_json.usage.seconds == pytest.approx(seconds, abs=1.0)

    assert isinstance(as_text, str) and as_text.strip() == as_json.text
    cues = list(srt.parse(as_srt))
    assert cues and wer(reference, " ".join(c.content for c in cues)) == pytest.approx(ours)
    assert 0 <= cues[0].start.total_seconds() < cues[-1].end.total_seconds() <= seconds + 0.5
    captions = list(webvtt.from_buffer(io.StringIO(as_vtt)))
    assert captions and "<v" not in as_vtt
    assert wer(reference, " ".join(c.text for c in captions)) == pytest.approx(ours)

    assert verbose.task == "transcribe" and verbose.language == "english"
    assert verbose.duration == pytest.approx(seconds, abs=0.1)
    assert verbose.text == as_json.text
    assert verbose.segments and verbose.words is None
    for number, segment in enumerate(verbose.segments):
        assert segment.id == number and 0 <= segment.start < segment.end <= seconds + 0.1
        assert segment.avg_logprob <= 0 and segment.compression_ratio > 0
    assert " ".join(s.text.strip() for s in verbose.segments) == verbose.text
    assert words.segments is None and words.words
    starts = [w.start for w in words.words]
    assert starts == sorted(starts) and all(w.start <= w.end <= seconds + 0.1 for w in words.words)
    assert " ".join(w.word for w in words.words) == words.text
    assert both.segments and both.words

    assert raw.status_code == 200
    assert stored["kind"] == "batch" and stored["status"] == "completed"
    assert stored["options"]["model"] == "whisper-tiny.en"  # whisper-1 = postcall.batch_model

    assert (unknown_model.status_code, _error(unknown_model)["code"]) == (404, "model_not_found")
    assert isinstance(unknown_model, openai.NotFoundError)
    assert _error(unknown_model)["param"] == "model"
    for exc, param in (
        (bad_format, "response_format"),
        (not_audio, "file"),
        (granularity_alone, "timestamp_granularities"),
        (bad_granularity, "timestamp_granularities"),
        (bad_language, "language"),
    ):
        assert isinstance(exc, openai.BadRequestError), exc
        body = _error(exc)
        assert body["param"] == param and body["type"] == "invalid_request_error", body
    empty_format, empty_temperature = empty_fields
    for response, param in (
        (no_file, "file"),
        (no_model, "model"),
        (empty_format, "response_format"),
        (empty_temperature, "temperature"),
    ):
        assert response.status_code == 400
        assert response.json()["error"]["param"] == param
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert not_multipart.status_code == 415
    assert "/v1/audio/transcriptions" in listed
