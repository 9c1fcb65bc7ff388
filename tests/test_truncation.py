"""A file that decodes to less than its container declares fails INVALID_AUDIO."""

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.batch import decode
from pipeline.jobs import JobFailure
from tests.api_helpers import make_settings, running_api, wait_done
from tests.conftest import librivox_files

SOURCE = "sense_and_sensibility_01_austen_64kb-0870"  # 7.1 s


def _source() -> Path:
    (found,) = [path for path in librivox_files() if path.stem == SOURCE]
    return found


def _encoded(tmp_path: Path, suffix: str, *args: str) -> bytes:
    if suffix == ".wav":
        return _source().read_bytes()
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    out = tmp_path / f"speech{suffix}"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-i", str(_source()), *args, str(out)], check=True
    )
    return out.read_bytes()


@pytest.mark.parametrize(
    ("suffix", "args", "message"),
    [
        (".wav", (), "its header declares 7.1 s but only 3.5 s decode"),
        (".mp3", (), "its header declares 7.1 s but only 3.5 s decode"),
        (".m4a", ("-movflags", "+faststart"), "its header declares 7.1 s but only 3.2 s decode"),
        (".m4a", (), "truncated or corrupt MP4/M4A (no readable moov box)"),
        (".webm", (), "its header declares 7.1 s but only 3.6 s decode"),
        (".flac", (), "its header declares 7.1 s but only 3.1 s decode"),
        (".ogg", (), "the Ogg stream ends before its last page (only 3.0 s decode)"),
        (".opus", (), "the Ogg stream ends before its last page (only 3.0 s decode)"),
    ],
)
async def test_half_a_file_fails_with_both_durations(
    tmp_path: Path, suffix: str, args: tuple[str, ...], message: str
) -> None:
    data = _encoded(tmp_path, suffix, *args)
    whole = await decode(data, f"a{suffix}", check_length=True)
    assert abs(whole.size / 16000 - 7.1) < 0.1
    with pytest.raises(JobFailure) as cut:
        await decode(data[: len(data) // 2], f"a{suffix}", check_length=True)
    assert cut.value.code == "INVALID_AUDIO"
    assert cut.value.message.endswith(message), cut.value.message
    (tmp_path / "cut").write_bytes(data[: len(data) // 2])
    with pytest.raises(JobFailure):
        await decode(tmp_path / "cut", "cut", check_length=True)


@pytest.mark.timeout(240)
async def test_truncated_wav_job_fails_unless_allowed_then_says_partial(
    nats_url: str, tmp_path: Path
) -> None:
    data = _source().read_bytes()
    cut = data[: len(data) // 2]
    async with running_api(make_settings(nats_url, tmp_path)) as (client, _):
        refused = await client.post("/v1/transcripts", files={"file": ("cut.wav", cut)})
        allowed = await client.post(
            "/v1/transcripts", files={"file": ("cut.wav", cut)}, data={"allow_truncated": "true"}
        )
        whole = await client.post("/v1/transcripts", files={"file": ("whole.wav", data)})
        failed, partial, complete = await asyncio.gather(
            *(wait_done(client, r.json()["id"]) for r in (refused, allowed, whole))
        )
    assert failed["status"] == "failed"
    assert failed["error"] == {
        "code": "INVALID_AUDIO",
        "message": "cut.wav: truncated: its header declares 7.1 s but only 3.5 s decode",
    }
    assert partial["status"] == "completed", partial
    assert partial["transcript"]["partial"] is True
    assert partial["transcript"]["declared_duration"] == 7.1
    assert abs(partial["transcript"]["duration"] - 3.55) < 0.1
    assert partial["transcript"]["segments"]
    assert complete["status"] == "completed"
    assert complete["transcript"]["partial"] is False
    assert complete["transcript"]["declared_duration"] is None
