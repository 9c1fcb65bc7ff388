"""Short conversations between distinct voices, with known turns, for diarization checks.

Voice 1 is the LibriVox reader of Debian's ``pocketsphinx-testdata`` (a human recording);
the others are espeak-ng voices picked far apart for speaker embeddings (CAM++ cosine
similarity 0.4-0.6 between them, 0.85-0.9 within one voice). Each voice gets its own
track (faint noise where it is silent); the mix is their sum. Everything is seeded, so a
given ``(speakers, seed)`` always gives the same audio.
"""

import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from pipeline.audio_io import SAMPLE_RATE, decode_file

LIBRIVOX_DIR = Path("/usr/share/pocketsphinx/test/data/librivox")
ESPEAK_VOICES = ("en-us+m3", "en-us+f3", "en+klatt")
LINES = (
    "The next item on the agenda is the mobile release.",
    "We finished most of the work last week, only the testing is left.",
    "I am worried that the billing migration will slip by about ten days.",
    "Can we move the deadline for the customer survey to next Friday?",
    "I would rather keep the date and cut the scope a little.",
    "That sounds reasonable to me, let us decide that today.",
    "The cost came in about five percent lower than we planned.",
    "Customers reported twelve problems with the login page this month.",
    "I talked to the vendor yesterday and they promised a fix within a week.",
    "Let us set up a short call on Monday morning to review it.",
    "Is there any risk we have not talked about yet?",
    "The main risk is that the test environment is not ready in time.",
)
_SILENCE = 300  # int16 amplitude below which leading and trailing samples are cut


@dataclass(frozen=True)
class Spoken:
    speaker: str
    start: float
    end: float
    text: str


@dataclass
class Conversation:
    turns: list[Spoken]
    tracks: dict[str, np.ndarray]
    mix: np.ndarray

    @property
    def duration(self) -> float:
        return self.mix.size / SAMPLE_RATE

    @property
    def speakers(self) -> list[str]:
        return list(self.tracks)

    def reference(self) -> list[tuple[float, float, str]]:
        return [(t.start, t.end, t.speaker) for t in self.turns]


def available() -> str | None:
    """Why conversations cannot be built here, or None when they can."""
    if shutil.which("espeak-ng") is None:
        return "espeak-ng is not installed (Debian package espeak-ng)"
    if not sorted(LIBRIVOX_DIR.glob("*.wav")):
        return f"no LibriVox utterances in {LIBRIVOX_DIR} (Debian package pocketsphinx-testdata)"
    return None


def _trim(samples: np.ndarray) -> np.ndarray:
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > _SILENCE)
    if loud.size == 0:
        raise RuntimeError("the utterance is silent")
    return samples[loud[0] : loud[-1] + 1]


@cache
def librivox() -> tuple[tuple[np.ndarray, str], ...]:
    """The LibriVox utterances (trimmed int16) with their transcripts."""
    texts = {}
    for line in (LIBRIVOX_DIR / "transcription").read_text().splitlines():
        words, _, utt_id = line.rpartition("(")
        texts[utt_id.strip(" )")] = words.replace("<s>", "").replace("</s>", "").strip()
    return tuple(
        (_trim(decode_file(path)), texts[path.stem]) for path in sorted(LIBRIVOX_DIR.glob("*.wav"))
    )


@cache
def espeak(voice: str, text: str, language: str = "en", speed: int = 160) -> np.ndarray:
    """``text`` spoken by espeak-ng (``-v language+variant`` when ``voice`` has no language),
    16 kHz int16 with leading and trailing silence cut."""
    with tempfile.TemporaryDirectory(prefix="roomscribe-espeak-") as tmp:
        path = Path(tmp) / "line.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text],
            check=True,
            capture_output=True,
        )
        return _trim(decode_file(path))


def conversation(
    speakers: int,
    turns_each: int = 3,
    *,
    seed: int = 0,
    overlap: float = 0.0,
    gap: tuple[float, float] = (0.3, 1.0),
) -> Conversation:
    """``speakers`` voices (2-4) taking ``turns_each`` turns each in a seeded order, never the
    same voice twice in a row. Turns follow each other after ``gap`` seconds of silence,
    except that with ``overlap`` > 0 every third turn starts that many seconds before the
    previous one ends."""
    if not 1 <= speakers <= 1 + len(ESPEAK_VOICES):
        raise ValueError(f"speakers must be 1-{1 + len(ESPEAK_VOICES)}, got {speakers}")
    rng = random.Random(seed)
    names = [f"v{n + 1}" for n in range(speakers)]
    order: list[int] = []
    left = dict.fromkeys(range(speakers), turns_each)
    while any(left.values()):
        choices = [v for v, n in left.items() if n and (not order or v != order[-1])]
        if not choices:  # only the previous voice has turns left
            choices = [v for v, n in left.items() if n]
        voice = rng.choice(sorted(choices, key=lambda v: -left[v])[:2])
        order.append(voice)
        left[voice] -= 1
    readings, lines = list(librivox()), list(LINES)
    rng.shuffle(lines)
    audio: list[tuple[int, np.ndarray, str]] = []
    for index, voice in enumerate(order):
        if voice == 0:
            samples, text = readings[order[:index].count(0) % len(readings)]
        else:
            text = lines[index % len(lines)]
            samples = espeak(ESPEAK_VOICES[voice - 1], text)
        audio.append((voice, samples, text))
    spoken: list[Spoken] = []
    placed: list[tuple[int, int, np.ndarray]] = []
    at = 0.5
    for index, (voice, samples, text) in enumerate(audio):
        if spoken and overlap > 0 and index % 3 == 2:
            at = max(spoken[-1].start + 0.5, spoken[-1].end - overlap)
        length = samples.size / SAMPLE_RATE
        spoken.append(Spoken(names[voice], round(at, 3), round(at + length, 3), text))
        placed.append((voice, round(at * SAMPLE_RATE), samples))
        at += length + rng.uniform(*gap)
    total = round((at + 0.5) * SAMPLE_RATE)
    noise = np.random.default_rng(seed)
    tracks = {}
    for voice, name in enumerate(names):
        track = noise.standard_normal(total) * 30  # -60 dBFS room noise
        for who, begin, samples in placed:
            if who == voice:
                track[begin : begin + samples.size] += samples
        tracks[name] = np.clip(track, -32768, 32767).astype(np.int16)
    mix = np.sum([t.astype(np.int32) for t in tracks.values()], axis=0)
    return Conversation(spoken, tracks, np.clip(mix, -32768, 32767).astype(np.int16))
