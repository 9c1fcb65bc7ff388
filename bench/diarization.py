"""Diarization benchmark: speakers found and DER per set, count unset and count given.

Sets: the pyannote sample call (2 speakers), conversations of 2-4 distinct voices from
:mod:`bench.voices` (seeds 0-1 with three turns each tuned the clustering threshold; seeds
2-3 with two turns each were held out), with and without a second of crosstalk every third
turn, the 3- and 4-voice dev meetings of :mod:`bench.devsets` (the accuracy sets) and the
generated four-voice meeting of :mod:`bench.meeting` (close espeak voices).

    python -m bench.diarization [--meeting-minutes 3] [--out FILE.json]
"""

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bench import voices
from bench.devsets import dev_meeting
from bench.meeting import build_meeting
from bench.scoring import diarization_error_rate
from config import load_settings
from engines.diarization import Diarizer, default_model_dir
from engines.diarization_export import prepare_diarization
from pipeline.audio_io import SAMPLE_RATE, decode_file

Reference = list[tuple[float, float, str]]


def _pyannote() -> tuple[np.ndarray, Reference]:
    from tests.pyannote_sample import pyannote_sample, read_rttm

    sample = pyannote_sample()
    turns = [(u.start, u.end, u.speaker) for u in read_rttm(sample.rttm)]
    return decode_file(sample.wav), turns


def sets(meeting_minutes: float) -> Iterator[tuple[str, int, np.ndarray, Reference]]:
    audio, reference = _pyannote()
    yield "pyannote sample", 2, audio, reference
    for seeds, turns_each, tag in (((0, 1), 3, "tuning"), ((2, 3), 2, "held out")):
        for count in (2, 3, 4):
            for seed in seeds:
                for overlap in (0.0, 1.0):
                    talk = voices.conversation(
                        count, turns_each=turns_each, seed=seed, overlap=overlap
                    )
                    name = f"{count} voices, seed {seed}, {'crosstalk' if overlap else 'no crosstalk'} ({tag})"
                    yield name, count, talk.mix, talk.reference()
    for speakers in (3, 4):
        dev = dev_meeting(speakers)
        yield (
            f"dev meeting, {speakers} voices (accuracy set)",
            speakers,
            dev.mix,
            dev.reference_turns(),
        )
    if meeting_minutes > 0:
        meeting = build_meeting(meeting_minutes)
        yield (
            f"{meeting_minutes:g}-minute meeting, 4 close espeak voices",
            4,
            meeting.mix,
            meeting.reference_turns(),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meeting-minutes", type=float, default=3.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    settings = load_settings()
    diarizer = Diarizer(prepare_diarization(default_model_dir(settings.data_dir)))
    rows = []
    print(
        "| set | audio s | voices | found (unset) | DER | DER 0.25 s collar | found (given) | DER | DER collar | RTF |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, count, audio, reference in sets(args.meeting_minutes):
        row: dict[str, object] = {"set": name, "voices": count}
        seconds = audio.size / SAMPLE_RATE
        cells = [name, f"{seconds:.1f}", str(count)]
        spent = 0.0
        for expected in (None, count):
            started = time.perf_counter()
            turns = diarizer.diarize(audio, expected)
            spent += time.perf_counter() - started
            hypothesis = [(t.start, t.end, t.speaker) for t in turns]
            found = len({t.speaker for t in turns})
            der = diarization_error_rate(reference, hypothesis)
            collar = diarization_error_rate(reference, hypothesis, collar=0.25)
            key = "given" if expected else "unset"
            row[key] = {"found": found, "der": round(der, 4), "der_collar": round(collar, 4)}
            cells += [str(found), f"{der:.1%}", f"{collar:.1%}"]
        cells.append(f"{spent / 2 / seconds:.3f}")
        rows.append(row)
        print("| " + " | ".join(cells) + " |", flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
