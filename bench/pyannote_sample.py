"""The two-speaker phone-call sample shipped inside the pyannote-audio wheel, with its references.

Only the wheel is downloaded (``pip download --no-deps``), never installed; the three sample
files are unzipped into a cache folder (``$ROOMSCRIBE_TEST_CACHE`` or
``~/.cache/roomscribe-test``) and reused by later runs.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

WHEEL = "pyannote-audio==4.0.7"
MEMBERS = ("sample.wav", "sample.rttm", "sample.stm")
MEMBER_DIR = "pyannote/audio/sample/"


@dataclass(frozen=True)
class SampleFiles:
    wav: Path
    rttm: Path
    stm: Path


@dataclass(frozen=True)
class Utterance:
    speaker: str
    start: float
    end: float
    text: str


class SampleUnavailableError(RuntimeError):
    """The wheel holding the sample cannot be downloaded."""


def cache_root() -> Path:
    configured = os.environ.get("ROOMSCRIBE_TEST_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "roomscribe-test"


def pyannote_sample() -> SampleFiles:
    """The sample's paths (downloaded once); raises SampleUnavailableError."""
    folder = cache_root() / WHEEL.replace("==", "-")
    files = SampleFiles(*(folder / name for name in MEMBERS))
    if all(path.is_file() for path in (files.wav, files.rttm, files.stm)):
        return files
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        download = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, WHEEL],
            capture_output=True,
            text=True,
            timeout=300,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if download.returncode != 0 or not wheels:
            raise SampleUnavailableError(
                f"cannot download {WHEEL} for its sample: {download.stderr[-500:]}"
            )
        staging = Path(tmp) / "sample"
        staging.mkdir()
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in MEMBERS:
                (staging / name).write_bytes(wheel.read(MEMBER_DIR + name))
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    return files


def read_rttm(path: Path) -> list[Utterance]:
    """RTTM SPEAKER lines -> utterances without text."""
    turns = []
    for line in path.read_text().splitlines():
        fields = line.split()
        if fields and fields[0] == "SPEAKER":
            start, duration = float(fields[3]), float(fields[4])
            turns.append(Utterance(fields[7], start, start + duration, ""))
    return turns


def read_stm(path: Path) -> list[Utterance]:
    """STM lines (``file channel speaker start end text``) -> utterances."""
    utterances = []
    for line in path.read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) >= 5 and not line.startswith(";;"):
            text = fields[5] if len(fields) > 5 else ""
            utterances.append(Utterance(fields[2], float(fields[3]), float(fields[4]), text))
    return utterances
