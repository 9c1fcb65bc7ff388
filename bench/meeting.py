"""A generated four-speaker meeting with known words and turns, spoken by espeak-ng.

The dialogue is drawn from templates (agenda, figures, decisions, action items) with a
seeded generator, so every run hears the same meeting. Turns follow each other with short
gaps and now and then start before the previous one ends. Each speaker gets a track of
the whole meeting (faint noise where they are silent); the mix is their sum.
"""

import random
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.audio_io import SAMPLE_RATE, decode_file


@dataclass(frozen=True)
class Voice:
    participant: str
    name: str
    espeak: str
    speed: int
    gain: float


VOICES = (
    Voice("p-anna", "Anna", "en-us+f4", 160, 1.0),
    Voice("p-mark", "Mark", "en-gb+m3", 150, 0.8),
    Voice("p-susan", "Susan", "en-gb-x-rp+f2", 170, 0.9),
    Voice("p-david", "David", "en-us+m1", 145, 1.1),
)

OPENING = (
    "Good morning everyone, thanks for joining the weekly planning meeting.",
    "Morning. Before we start, can everyone hear me clearly?",
    "Yes, the sound is fine on my side.",
    "Same here. Let us go through the agenda.",
)
CLOSING = (
    "I think that covers everything on the agenda for today.",
    "Thank you all, I will send the notes and the action items after the call.",
    "Thanks, have a good week.",
    "Bye everyone, talk to you next Monday.",
)
TOPICS = (
    "the mobile release",
    "the billing migration",
    "the customer survey",
    "the data center move",
    "the hiring plan",
    "the security audit",
    "the new onboarding flow",
    "the marketing budget",
    "the support backlog",
    "the partner integration",
)
PEOPLE = ("Anna", "Mark", "Susan", "David")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
NUMBERS = (
    "two",
    "three",
    "four",
    "five",
    "six",
    "eight",
    "ten",
    "twelve",
    "fifteen",
    "twenty",
    "thirty",
    "forty",
    "fifty",
)
TEMPLATES = (
    "The next item on the agenda is {topic}.",
    "Where are we with {topic}?",
    "We finished most of the work on {topic} last week, only the testing is left.",
    "The team closed {n} tickets on {topic} since our last meeting.",
    "I am worried that {topic} will slip by about {n} days.",
    "Can we move the deadline for {topic} to next {day}?",
    "I would rather keep the date and cut the scope a little.",
    "That sounds reasonable to me.",
    "I agree, let us decide that today.",
    "So the decision is that {topic} ships on {day} with a smaller scope.",
    "{person} will write the summary for {topic} and share it by {day}.",
    "Action item for {person}: check the numbers on {topic} before {day}.",
    "The cost came in about {n} percent lower than we planned.",
    "We spent {n} thousand dollars so far, which is within the budget.",
    "Customers reported {n} problems with {topic} this month.",
    "Most of those reports were about the login page being slow.",
    "I talked to the vendor yesterday and they promised a fix within {n} days.",
    "Do we have enough people to cover {topic} while Mark is on holiday?",
    "I can help with that for a couple of weeks.",
    "Let us set up a short call on {day} morning to review it.",
    "The dashboard shows that usage grew by {n} percent in the last quarter.",
    "We should ask the design team for feedback before we go further.",
    "I will send the invitation right after this meeting.",
    "Is there any risk we have not talked about yet?",
    "The main risk is that the test environment is not ready in time.",
    "Then let us put that on the list for {person} to follow up.",
    "Sorry, could you repeat the last point about {topic}?",
    "Sure, the plan is to start with a small group of {n} users.",
    "If the results look good we roll it out to everyone on {day}.",
    "Does anyone object to that plan?",
    "No objection from me.",
    "I think we need one more week of testing for {topic}.",
    "Let us note that as an open question for the next meeting.",
    "The contract for {topic} has to be signed by the end of the month.",
    "Legal already reviewed the draft and asked for {n} small changes.",
    "Good, then we are on track.",
    "One more thing, the office will be closed next {day}.",
    "Please update your calendars and tell your teams.",
)


@dataclass(frozen=True)
class Line:
    voice: Voice
    text: str


@dataclass(frozen=True)
class Utterance:
    participant: str
    start: float
    end: float
    text: str


@dataclass
class Meeting:
    duration: float
    utterances: list[Utterance]
    tracks: dict[str, np.ndarray]
    mix: np.ndarray

    def reference_text(self) -> str:
        return " ".join(u.text for u in self.utterances)

    def reference_turns(self) -> list[tuple[float, float, str]]:
        return [(u.start, u.end, u.participant) for u in self.utterances]


def dialogue(count: int, seed: int = 11) -> list[Line]:
    """``count`` lines: an opening, drawn lines, a closing; no speaker twice in a row."""
    rng = random.Random(seed)
    texts = list(OPENING)
    while len(texts) < max(count - len(CLOSING), len(OPENING)):
        texts.append(
            rng.choice(TEMPLATES).format(
                topic=rng.choice(TOPICS),
                person=rng.choice(PEOPLE),
                day=rng.choice(DAYS),
                n=rng.choice(NUMBERS),
            )
        )
    texts.extend(CLOSING)
    lines, previous = [], -1
    for text in texts:
        speaker = rng.choice([i for i in range(len(VOICES)) if i != previous])
        lines.append(Line(VOICES[speaker], text))
        previous = speaker
    return lines


def speak(line: Line, folder: Path, index: int) -> np.ndarray:
    """The line as 16 kHz int16, leading and trailing silence cut."""
    path = folder / f"{index:04d}.wav"
    subprocess.run(
        ["espeak-ng", "-v", line.voice.espeak, "-s", str(line.voice.speed), "-w", str(path)]
        + [line.text],
        check=True,
        capture_output=True,
    )
    samples = decode_file(path).astype(np.float32) * line.voice.gain
    loud = np.flatnonzero(np.abs(samples) > 300)
    if loud.size == 0:
        raise RuntimeError(f"espeak-ng produced silence for {line.text!r}")
    return np.clip(samples[loud[0] : loud[-1] + 1], -32768, 32767).astype(np.int16)


def build_meeting(minutes: float, seed: int = 11) -> Meeting:
    """Lines are added until the meeting lasts ``minutes``."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (Debian package espeak-ng)")
    rng = np.random.default_rng(seed)
    target = minutes * 60.0
    count = max(int(target / 3.2), len(OPENING) + len(CLOSING))
    lines = dialogue(count, seed)
    with (
        tempfile.TemporaryDirectory(prefix="roomscribe-meeting-") as tmp,
        ThreadPoolExecutor(2) as pool,
    ):
        audio = list(pool.map(speak, lines, [Path(tmp)] * len(lines), range(len(lines))))
    # Drawn lines beyond the target length are dropped (turns are about 0.7 s apart).
    while len(lines) > len(OPENING) + len(CLOSING) and (
        sum(a.size for a in audio) / SAMPLE_RATE + 0.7 * len(audio) > target
    ):
        del lines[-len(CLOSING) - 1], audio[-len(CLOSING) - 1]
    placed: list[tuple[Line, float, np.ndarray]] = []
    at = 1.0
    for line, samples in zip(lines, audio, strict=True):
        placed.append((line, at, samples))
        length = samples.size / SAMPLE_RATE
        if rng.random() < 0.12 and length > 2.0:
            at += length - float(rng.uniform(0.3, 0.8))  # the next one starts early
        else:
            at += length + float(rng.uniform(0.25, 1.2))
    duration = max(start + s.size / SAMPLE_RATE for _, start, s in placed) + 1.0
    total = int(duration * SAMPLE_RATE)
    sums = {v.participant: np.zeros(total, dtype=np.int32) for v in VOICES}
    utterances = []
    for line, start, samples in placed:
        begin = int(start * SAMPLE_RATE)
        sums[line.voice.participant][begin : begin + samples.size] += samples
        utterances.append(
            Utterance(
                line.voice.participant,
                round(start, 3),
                round(start + samples.size / SAMPLE_RATE, 3),
                line.text,
            )
        )
    tracks = {}
    for participant, summed in sums.items():
        noise = rng.standard_normal(total) * 30  # -60 dBFS room noise
        tracks[participant] = np.clip(summed + noise, -32768, 32767).astype(np.int16)
    mix = np.clip(np.sum([t.astype(np.int32) for t in tracks.values()], axis=0), -32768, 32767)
    return Meeting(round(duration, 3), utterances, tracks, mix.astype(np.int16))


_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def _spell(number: int) -> str:
    if number < 20:
        return _ONES[number]
    if number < 100:
        tens, ones = divmod(number, 10)
        return _TENS[tens] + ("" if ones == 0 else f" {_ONES[ones]}")
    if number < 1000:
        hundreds, rest = divmod(number, 100)
        return f"{_ONES[hundreds]} hundred" + ("" if rest == 0 else f" {_spell(rest)}")
    thousands, rest = divmod(number, 1000)
    return f"{_spell(thousands)} thousand" + ("" if rest == 0 else f" {_spell(rest)}")


def spell_numbers(text: str) -> str:
    """Figures as the script words them ("15%" -> "fifteen percent", "$40,000" -> "forty
    thousand dollars"), so digits a recognizer writes are not counted as errors."""
    text = re.sub(r"(\d),(\d{3})", r"\1\2", text)
    text = re.sub(r"\$(\d{1,6})\b", lambda m: f"{_spell(int(m.group(1)))} dollars", text)
    text = re.sub(r"(\d)\s*%", r"\1 percent", text)
    return re.sub(r"\d{1,6}", lambda m: f" {_spell(int(m.group(0)))} ", text)
