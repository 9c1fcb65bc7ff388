"""Durable per-speaker recording of a call, read back by the post-call job.

Layout under ``<data_dir>/calls/<call_id>/``:

* ``call.json``: call id, room, the id of its post-call job, start/end time, end reason,
  whether it was handed over (recording in the object store, job queued) and participants
  (id, name, language, file, offset = seconds since call start of the participant's first
  sample); rewritten atomically whenever it changes.
* ``<encoded participant>[-<n>].wav``: 16 kHz mono s16 WAV; the header is patched at every
  flush so the file is valid even if the process dies mid-call.
* ``finals.jsonl``: every live final caption frame, one JSON object a line.

A call whose ``ended_at`` is still null after a restart was interrupted: :func:`repair_wav`
makes its files whole again (the header counts the samples up to the last flush).
"""

import json
import os
import struct
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from protocol import CaptionFrame, encode_token

SAMPLE_RATE = 16_000
WAV_HEADER_BYTES = 44


def wav_header(data_bytes: int) -> bytes:
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, SAMPLE_RATE, SAMPLE_RATE * 2, 2, 16)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


class TrackRecorder:
    """Appends int16 samples to a WAV file. Every ``flush_s`` of audio the header is patched and
    the data handed to the OS (safe if the process dies); every ``sync_s`` it is fsynced (safe
    if the machine dies) -- fsync per second per track would dominate with many tracks."""

    def __init__(self, path: Path, flush_s: float = 1.0, sync_s: float = 10.0) -> None:
        self.path = path
        self._file: BinaryIO = open(path, "wb")  # noqa: SIM115 - held for the call's lifetime
        self._file.write(wav_header(0))
        self._bytes = 0
        self._unflushed = 0
        self._unsynced = 0
        self._flush_every = int(flush_s * SAMPLE_RATE) * 2
        self._sync_every = int(sync_s * SAMPLE_RATE) * 2

    @property
    def seconds(self) -> float:
        return self._bytes / 2 / SAMPLE_RATE

    def write(self, samples: np.ndarray) -> None:
        data = np.ascontiguousarray(samples, "<i2")
        self._file.write(data.data)  # the array's own buffer: no bytes copy per write
        self._bytes += data.nbytes
        self._unflushed += data.nbytes
        if self._unflushed >= self._flush_every:
            self.flush()

    def flush(self) -> None:
        if self._file.closed:
            return
        self._file.seek(0)
        self._file.write(wav_header(self._bytes))
        self._file.seek(0, os.SEEK_END)
        self._file.flush()
        self._unsynced += self._unflushed
        self._unflushed = 0
        if self._unsynced >= self._sync_every:
            os.fsync(self._file.fileno())
            self._unsynced = 0

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            os.fsync(self._file.fileno())
            self._file.close()


def repair_wav(path: Path) -> float:
    """Patch the header of a WAV cut short by a crash to the samples on disk; seconds kept."""
    size = path.stat().st_size
    data = max(size - WAV_HEADER_BYTES, 0) // 2 * 2
    with open(path, "r+b") as file:
        file.write(wav_header(data))
        file.truncate(WAV_HEADER_BYTES + data)
    return data / 2 / SAMPLE_RATE


@dataclass
class ParticipantRecord:
    participant: str
    name: str | None
    language: str | None
    file: str
    offset: float


@dataclass
class CallRecord:
    call_id: str
    room: str
    directory: Path
    started_at: float
    job_id: str | None = None
    ended_at: float | None = None
    end_reason: str | None = None
    handed_over: bool = False
    participants: list[ParticipantRecord] = field(default_factory=list)

    @property
    def state(self) -> Literal["live", "ended", "handed_over"]:
        """``live`` (no end yet: running, or interrupted if this process did not start it),
        ``ended`` (not yet handed over) or ``handed_over``."""
        if self.ended_at is None:
            return "live"
        return "handed_over" if self.handed_over else "ended"

    @property
    def files(self) -> list[str]:
        """The call's files, as named in its directory and in the object store."""
        return ["call.json", "finals.jsonl", *(p.file for p in self.participants)]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["directory"] = str(self.directory)
        return data

    def save(self) -> None:
        target = self.directory / "call.json"
        temp = target.with_suffix(".tmp")
        temp.write_text(json.dumps(self.to_json(), indent=2))
        os.replace(temp, target)

    @classmethod
    def load(cls, directory: Path) -> "CallRecord":
        data = json.loads((directory / "call.json").read_text())
        data["directory"] = directory
        data["participants"] = [ParticipantRecord(**p) for p in data["participants"]]
        return cls(**data)

    def audio_path(self, record: ParticipantRecord) -> Path:
        return self.directory / record.file

    def live_finals(self) -> list[CaptionFrame]:
        path = self.directory / "finals.jsonl"
        if not path.exists():
            return []
        frames = []
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    frames.append(CaptionFrame.model_validate_json(line))
                except ValueError:
                    continue  # a line torn by a crash mid-write
        return frames


class CallRecorder:
    """Owns one call's directory: call.json, per-participant WAVs and finals.jsonl."""

    def __init__(self, calls_dir: Path, call_id: str, room: str, job_id: str | None = None) -> None:
        directory = calls_dir / call_id
        directory.mkdir(parents=True, exist_ok=True)
        self.record = CallRecord(call_id, room, directory, time.time(), job_id=job_id)
        self.record.save()
        self._finals = open(directory / "finals.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    def track(
        self, participant: str, name: str | None, language: str | None, offset: float
    ) -> TrackRecorder:
        base = encode_token(participant, "participant")
        taken = {p.file for p in self.record.participants}
        file = f"{base}.wav"
        count = 1
        while file in taken:
            count += 1
            file = f"{base}-{count}.wav"
        self.record.participants.append(
            ParticipantRecord(participant, name, language, file, round(offset, 3))
        )
        self.record.save()
        return TrackRecorder(self.record.directory / file)

    def rename(self, participant: str, name: str) -> None:
        for record in self.record.participants:
            if record.participant == participant:
                record.name = name
        self.record.save()

    def final(self, frame: CaptionFrame) -> None:
        self._finals.write(frame.model_dump_json() + "\n")
        self._finals.flush()

    def close(self, reason: str) -> CallRecord:
        self.record.ended_at = time.time()
        self.record.end_reason = reason
        self.record.save()
        if not self._finals.closed:
            self._finals.close()
        return self.record


def recorded_calls(calls_dir: Path) -> list[CallRecord]:
    """Every call recorded under ``calls_dir``, oldest first (unreadable ones skipped)."""
    found = []
    for path in calls_dir.glob("*/call.json") if calls_dir.is_dir() else ():
        try:
            found.append(CallRecord.load(path.parent))
        except (ValueError, TypeError, KeyError, OSError):
            continue
    return sorted(found, key=lambda call: call.started_at)
