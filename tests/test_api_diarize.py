"""Mixed two-speaker audio through the API with diarization, scored against the references."""

import io
from pathlib import Path

import httpx
import pytest
import srt
import webvtt

from config import load_settings
from engines import diarization_models as model_dirs
from engines.diarization import PREPARE_COMMAND, PULL_COMMAND, check_model_dir
from engines.diarization_export import ExportUnavailableError, prepare_diarization
from tests.api_helpers import make_settings, running_api, wait_done, wer
from tests.der import diarization_error_rate
from tests.pyannote_sample import cache_root, pyannote_sample, read_rttm, read_stm
from tests.service_helpers import served


@pytest.fixture(scope="session")
def diarization_models() -> Path:
    try:
        return prepare_diarization(cache_root() / "diarization-models")
    except ExportUnavailableError as exc:
        pytest.skip(f"diarization models are not prepared and cannot be exported here: {exc}")


async def test_two_speakers_diarized_and_transcribed(
    nats_url: str, tmp_path: Path, diarization_models: Path
) -> None:
    sample = pyannote_sample()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "diarization").symlink_to(diarization_models)
    async with running_api(make_settings(nats_url, tmp_path)) as (client, _):
        created = await client.post(
            "/v1/transcripts",
            files={"file": ("sample.wav", sample.wav.read_bytes())},
            data={"diarize": "true", "speakers_expected": "2", "language": "en"},
        )
        assert created.status_code == 202, created.text
        body = await wait_done(client, created.json()["id"], limit_s=180)
        assert body["status"] == "completed", body
        job_id = body["id"]
        srt_text = (await client.get(f"/v1/transcripts/{job_id}.srt")).text
        vtt_text = (await client.get(f"/v1/transcripts/{job_id}.vtt")).text

    transcript = body["transcript"]
    assert {s["id"] for s in transcript["speakers"]} == {"S1", "S2"}
    reference = [(u.start, u.end, u.speaker) for u in read_rttm(sample.rttm)]
    hypothesis = [(s["start"], s["end"], s["speaker"]) for s in transcript["segments"]]
    der = diarization_error_rate(reference, hypothesis, collar=0.25)
    words = " ".join(u.text for u in read_stm(sample.stm))
    error = wer(words, " ".join(s["text"] for s in transcript["segments"]))
    print(f"pyannote sample via API: DER {der:.3f} (collar 0.25), WER {error:.3f}")
    assert der <= 0.15
    assert error <= 0.25
    cues = list(srt.parse(srt_text))
    assert len(cues) >= 2
    voices = {c.voice for c in webvtt.from_buffer(io.StringIO(vtt_text))}
    assert voices == {"S1", "S2"}


async def test_missing_diarization_models_fail_the_job_with_advice(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_dirs, "installed_model_dir", lambda: tmp_path / "none")
    sample = pyannote_sample()
    async with running_api(make_settings(nats_url, tmp_path)) as (client, _):
        created = await client.post(
            "/v1/transcripts",
            files={"file": ("sample.wav", sample.wav.read_bytes())},
            data={"diarize": "true"},
        )
        body = await wait_done(client, created.json()["id"])
    assert body["status"] == "failed"
    assert body["error"]["code"] == "DIARIZATION_UNAVAILABLE"
    assert PREPARE_COMMAND in body["error"]["message"]
    assert PULL_COMMAND in body["error"]["message"]


async def test_diarization_is_ready_in_a_fresh_data_dir_after_setup(tmp_path: Path) -> None:
    """The README's setup prepares the models into the environment: a service on a data dir
    that holds nothing diarizes a two-speaker call, the count left to it."""
    check_model_dir(model_dirs.installed_model_dir())  # scripts/prepare-diarization
    sample = pyannote_sample()
    async with (
        served(load_settings(data_dir=tmp_path)) as service,
        httpx.AsyncClient(base_url=service.http_url) as client,
    ):
        created = await client.post(
            "/v1/transcripts",
            files={"file": ("sample.wav", sample.wav.read_bytes())},
            data={"diarize": "true"},
        )
        assert created.status_code == 202, created.text
        body = await wait_done(client, created.json()["id"], limit_s=180)
    assert body["status"] == "completed", body
    assert not (tmp_path / "models" / "diarization").exists()
    assert {s["id"] for s in body["transcript"]["speakers"]} == {"S1", "S2"}
