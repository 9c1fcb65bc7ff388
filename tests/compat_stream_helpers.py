"""Shared pieces of the compatible streaming API tests: LibriVox speech, the plain model's WER
on the same audio, and reading a session's saved job."""

from functools import cache

import httpx
import numpy as np
from faster_whisper import WhisperModel

from bench.scoring import wer
from config import load_settings
from engines.models import resolve
from tests.api_helpers import wait_done
from tests.conftest import librivox_files, librivox_reference, read_wav16

# live finals against the plain offline model on the same audio (as tests/test_accuracy.py)
LIVE_SLACK = 0.10


def speech(count: int | None = None) -> tuple[np.ndarray, str]:
    """LibriVox utterances with a second of silence after each, and their reference text."""
    files = librivox_files()[:count]
    refs = librivox_reference()
    silence = np.zeros(16000, np.int16)
    audio = np.concatenate([np.concatenate([read_wav16(f), silence]) for f in files])
    return audio, " ".join(refs[f.stem] for f in files)


@cache
def _plain() -> WhisperModel:
    path = resolve("whisper-tiny.en", load_settings().data_dir).path
    return WhisperModel(str(path), device="cpu", compute_type="int8")


def plain_wer(audio: np.ndarray, reference: str) -> float:
    """The WER of the plain faster-whisper call of the live model on the same audio."""
    segments, _ = _plain().transcribe(
        audio.astype(np.float32) / 32768, beam_size=5, vad_filter=True
    )
    return wer(reference, " ".join(s.text for s in segments))


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def saved_job(
    http_url: str, job_id: str, headers: dict[str, str] | None = None, limit_s: float = 240
) -> dict:
    """The session's job once its post-call pass is done (it must exist: handed over)."""
    async with httpx.AsyncClient(base_url=http_url, headers=headers or {}) as client:
        body = await wait_done(client, job_id, limit_s=limit_s)
        listed = (await client.get("/v1/transcripts")).json()["data"]
        assert job_id in [job["id"] for job in listed]
        return body
