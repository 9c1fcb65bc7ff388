"""One mono mix of a recorded call: every participant's track placed at its offset."""

import numpy as np

from pipeline.audio_io import SAMPLE_RATE, AudioDecodeError, decode_file
from pipeline.recorder import CallRecord


def mix_call(call: CallRecord) -> tuple[np.ndarray, int]:
    """16 kHz mono int16 from the call's start, and how many tracks had audio."""
    tracks: list[tuple[int, np.ndarray]] = []
    for participant in call.participants:
        path = call.audio_path(participant)
        if not path.is_file() or path.stat().st_size <= 44:
            continue
        try:
            samples = decode_file(path)
        except AudioDecodeError:
            continue  # a track cut before its first sample
        if samples.size:
            tracks.append((int(round(participant.offset * SAMPLE_RATE)), samples))
    if not tracks:
        return np.zeros(0, dtype=np.int16), 0
    mix = np.zeros(max(at + samples.size for at, samples in tracks), dtype=np.int32)
    for at, samples in tracks:
        mix[at : at + samples.size] += samples
    return np.clip(mix, -32768, 32767).astype(np.int16), len(tracks)
