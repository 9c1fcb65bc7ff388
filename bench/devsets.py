"""Dev sets with known words: the LibriVox utterances and scripted meetings built from them
and espeak-ng voices, laid out to catch lost speech (pauses of 0.5-15 s, a turn right after a
long silence, a long turn after a short pause near the end, a short turn at the very end).

Each meeting has one track per participant (silent, with faint room noise, while the others
talk) and their mix, like a call recorded per speaker and as one stream.
"""

import shutil
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from bench.meeting import VOICES, Line, Meeting, Utterance, speak
from pipeline.audio_io import SAMPLE_RATE, decode_file

LIBRIVOX_DIR = Path("/usr/share/pocketsphinx/test/data/librivox")
LIBRIVOX = "p-reader"
PYANNOTE_SPEAKERS = {"speaker90": "diane", "speaker91": "sheila"}


@dataclass(frozen=True)
class Clip:
    """One reference utterance: 16 kHz int16 and its words."""

    name: str
    samples: np.ndarray
    text: str


@cache
def librivox() -> tuple[Clip, ...]:
    """The five utterances of Debian's ``pocketsphinx-testdata``, in file order."""
    listing = LIBRIVOX_DIR / "transcription"
    if not listing.is_file():
        raise RuntimeError(f"{listing} is missing (Debian package pocketsphinx-testdata)")
    clips = []
    for line in listing.read_text().splitlines():
        text = line.split("</s>")[0].replace("<s>", "").strip()
        name = line.rsplit("(", 1)[1].strip(" )")
        clips.append(Clip(name, decode_file(LIBRIVOX_DIR / f"{name}.wav"), text))
    return tuple(sorted(clips, key=lambda c: c.name))


# (speaker, text or LibriVox clip index, silence before the turn in seconds); speaker 0 is
# the LibriVox reader, 1-3 espeak-ng voices
_SCRIPT: tuple[tuple[int, str | int, float], ...] = (
    (0, 0, 0.8),
    (1, "Good morning. I looked at the billing numbers before the call.", 0.5),
    (2, "Morning everyone. Can we start with the mobile release?", 1.0),
    (0, 1, 0.7),
    (1, "The release slipped by three days because the test environment was not ready.", 3.0),
    (3, "I can help with the testing next week.", 0.6),
    (2, 2, 8.0),
    (0, 3, 1.2),
    (3, "Then let us decide today and move on to the security audit.", 15.0),
    (1, "Sure.", 0.5),
    (
        2,
        "The audit found two small problems with the login page, and the vendor promised "
        "a fix within ten days, so we should be ready before the end of the month.",
        1.0,
    ),
    (0, 4, 0.9),
    (3, "Thanks, bye.", 0.7),
)


def _voices(count: int) -> list[str]:
    return [LIBRIVOX, *(v.participant for v in VOICES[: count - 1])]


@cache
def dev_meeting(speakers: int = 3) -> Meeting:
    """The scripted meeting with ``speakers`` (2-4) voices: the LibriVox reader and espeak-ng
    voices; turns of speakers beyond ``speakers`` go to the others in turn."""
    if not 2 <= speakers <= 4:
        raise ValueError(f"speakers must be 2-4, got {speakers}")
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (Debian package espeak-ng)")
    clips = librivox()
    names = _voices(speakers)
    voice_of = {v.participant: v for v in VOICES}
    turns: list[tuple[str, float, np.ndarray, str]] = []
    at = 0.0
    with tempfile.TemporaryDirectory(prefix="roomscribe-devset-") as tmp:
        for index, (who, what, gap) in enumerate(_SCRIPT):
            participant = names[0] if who == 0 else names[1 + (who - 1) % (speakers - 1)]
            if isinstance(what, int):
                samples, text = clips[what].samples, clips[what].text
            else:
                samples = speak(Line(voice_of[participant], what), Path(tmp), index)
                text = what
            at += gap
            turns.append((participant, at, samples, text))
            at += samples.size / SAMPLE_RATE
    duration = at + 1.0
    total = int(duration * SAMPLE_RATE)
    rng = np.random.default_rng(5)
    sums = {name: np.zeros(total, np.int32) for name in names}
    utterances = []
    for participant, start, samples, text in turns:
        begin = int(start * SAMPLE_RATE)
        sums[participant][begin : begin + samples.size] += samples
        end = start + samples.size / SAMPLE_RATE
        utterances.append(Utterance(participant, round(start, 3), round(end, 3), text))
    tracks = {
        name: np.clip(summed + rng.standard_normal(total) * 30, -32768, 32767).astype(np.int16)
        for name, summed in sums.items()
        if summed.any()
    }
    mix = np.clip(np.sum([t.astype(np.int32) for t in tracks.values()], axis=0), -32768, 32767)
    return Meeting(round(duration, 3), utterances, tracks, mix.astype(np.int16))


def speaker_reference(meeting: Meeting, participant: str) -> str:
    return " ".join(u.text for u in meeting.utterances if u.participant == participant)


def split_by_rttm(mix: np.ndarray, rttm: Path) -> dict[str, np.ndarray]:
    """The pyannote phone call as one track per speaker: each RTTM turn copied to its
    speaker's track (named by ``PYANNOTE_SPEAKERS``), silence elsewhere."""
    tracks = {name: np.zeros_like(mix) for name in PYANNOTE_SPEAKERS.values()}
    for line in rttm.read_text().splitlines():
        fields = line.split()
        if fields and fields[0] == "SPEAKER" and fields[7] in PYANNOTE_SPEAKERS:
            begin = int(float(fields[3]) * SAMPLE_RATE)
            end = begin + int(float(fields[4]) * SAMPLE_RATE)
            tracks[PYANNOTE_SPEAKERS[fields[7]]][begin:end] = mix[begin:end]
    return tracks
