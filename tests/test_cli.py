"""The `roomscribe` command, run as a user runs it."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import nats
import srt

from protocol import CaptionFrame, Subjects, parse_frame
from tests.conftest import librivox_files


def roomscribe(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "roomscribe", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )


async def test_live_prints_frames_and_publishes_them_on_nats(nats_url: str, tmp_path: Path) -> None:
    files = librivox_files()
    flac = tmp_path / "bob.flac"  # another container and sample rate: 44.1 kHz FLAC
    convert = await asyncio.create_subprocess_exec(
        "ffmpeg", "-loglevel", "error", "-i", str(files[4]), "-ar", "44100", str(flac)
    )  # fmt: skip
    assert await convert.wait() == 0
    nc = await nats.connect(nats_url)
    received: list[tuple[str, bytes]] = []
    room = "stand.up *>"
    subjects = Subjects()

    async def on_message(msg: nats.aio.msg.Msg) -> None:
        received.append((msg.subject, msg.data))

    await nc.subscribe(subjects.room_captions(room), cb=on_message)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "roomscribe", "live", str(files[1]), str(flac),
        "--names", "Alice,Bob", "--room", room, "--nats", nats_url, "--data-dir", str(tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    await asyncio.sleep(0.5)
    await nc.close()
    printed = [parse_frame(line) for line in out.decode().splitlines()]
    finals = [f for f in printed if isinstance(f, CaptionFrame) and f.type == "final"]
    assert {f.participant for f in finals} == {"alice", "bob"}
    assert "young man" in " ".join(f.text for f in finals if f.participant == "alice")
    assert "amiable" in " ".join(f.text for f in finals if f.participant == "bob")
    from_nats = [parse_frame(data) for _, data in received]
    nats_finals = [f for f in from_nats if isinstance(f, CaptionFrame) and f.type == "final"]
    assert sorted(f.model_dump_json() for f in nats_finals) == sorted(
        f.model_dump_json() for f in finals
    )
    for subject, data in received:
        frame = parse_frame(data)
        assert isinstance(frame, CaptionFrame)
        assert subjects.parse_captions(subject) == (room, frame.participant)
    events = [f.event for f in printed if f.type == "event"]
    assert events[0] == "call.started" and events[-1] == "call.ended"


def test_bad_files_give_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 20)
    cases = {
        empty: "error [EMPTY_AUDIO]",
        text: "error [UNSUPPORTED_FORMAT]",
        tmp_path / "missing.wav": "error [NOT_FOUND]",
    }
    for path, expected in cases.items():
        result = roomscribe("live", str(path), data_dir=tmp_path)
        assert result.returncode == 2
        assert expected in result.stderr and str(path.name) in result.stderr
    missing_model = roomscribe(
        "transcribe", str(librivox_files()[1]), "--model", "no-such-model", data_dir=tmp_path
    )
    assert missing_model.returncode == 2
    assert (
        "error [MODEL_NOT_FOUND]" in missing_model.stderr
        and "whisper-tiny.en" in missing_model.stderr
    )


def test_transcribe_refuses_a_language_its_model_cannot_do(tmp_path: Path) -> None:
    result = roomscribe(
        "transcribe", str(librivox_files()[1]), "--language", "de", data_dir=tmp_path
    )
    assert result.returncode == 2
    assert "error [INVALID_REQUEST]" in result.stderr
    assert "'de'" in result.stderr and "whisper-base" in result.stderr


def test_transcribe_renders_srt(tmp_path: Path) -> None:
    result = roomscribe(
        "transcribe", str(librivox_files()[3]), "--format", "srt", data_dir=tmp_path
    )
    assert result.returncode == 0, result.stderr
    cues = list(srt.parse(result.stdout))
    assert cues and "amiable" in " ".join(c.content for c in cues).lower()


def test_schema_lists_every_wire_record(tmp_path: Path) -> None:
    result = roomscribe("schema", data_dir=tmp_path)
    groups = json.loads(result.stdout)
    assert set(groups) == {"frames", "listen", "jobs", "webhooks", "http"}
    assert set(groups["frames"]) == {"CaptionFrame", "EventFrame", "ErrorFrame"}
    assert "segment_id" in groups["frames"]["CaptionFrame"]["properties"]
    assert set(groups["listen"]) == {
        "ListenStart", "ListenEnd", "ListenReady", "ListenCompleted", "ListenError",
    }  # fmt: skip
    assert "attempts" in groups["jobs"]["JobRecord"]["properties"]
    assert {"WebhookEvent", "CallEndedData", "JobEventData", "Delivery"} <= set(groups["webhooks"])
    assert "CAPACITY" in json.dumps(groups["http"]["ErrorBody"])


def test_models_list_shows_packaged_models(tmp_path: Path) -> None:
    result = roomscribe("models", "list", data_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("whisper-tiny.en"))
    assert line.split()[-1] == "yes" and "whisper" in line
