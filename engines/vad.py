"""Voice activity: webrtcvad as the cheap per-frame gate with hysteresis."""

from collections import deque
from dataclasses import dataclass

import numpy as np
import webrtcvad

from engines.base import SAMPLE_RATE

FRAME = 480  # 30 ms at 16 kHz


@dataclass
class VadConfig:
    mode: int = 2
    start_frames: int = 3  # of the last `window` frames, this many voiced opens speech
    window: int = 5
    min_silence_s: float = 0.45
    pre_roll_s: float = 0.2


def pcm16(samples: np.ndarray) -> bytes:
    """float32 samples -> the s16le bytes webrtcvad hears (any number of frames at once)."""
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


class SpeechGate:
    """Feeds 30 ms frames and reports where speech starts and ends (in samples).

    Outside speech an all-zero frame (a DTX gap or a hole filled with silence) is unvoiced
    without asking webrtcvad: its hangover would otherwise make a lone 20 ms DTX packet of
    room noise followed by a gap look like an onset, and its noise model would adapt to a
    signal that is not there. Inside speech every frame is heard, hangover included, so
    utterances end as webrtcvad has them end.
    """

    def __init__(self, config: VadConfig) -> None:
        self.config = config
        self._vad = webrtcvad.Vad(config.mode)
        self._recent: deque[bool] = deque(maxlen=config.window)
        self.in_speech = False
        self.silent_frames = 0
        self.vad_frames = 0  # frames webrtcvad heard
        self._silence_to_end = max(1, round(config.min_silence_s * SAMPLE_RATE / FRAME))

    def frame(self, samples: np.ndarray) -> str | None:
        """One 30 ms float32 frame -> "start", "end" or None."""
        return self.pcm_frame(pcm16(samples), not samples.any())

    def pcm_frame(self, pcm: bytes, zero: bool) -> str | None:
        """One 30 ms frame as :func:`pcm16` bytes; ``zero``: all its samples are 0."""
        if zero and not self.in_speech:
            voiced = False
        else:
            voiced = self._vad.is_speech(pcm, SAMPLE_RATE)
            self.vad_frames += 1
        self._recent.append(voiced)
        if not self.in_speech:
            if sum(self._recent) >= self.config.start_frames:
                self.in_speech = True
                self.silent_frames = 0
                return "start"
            return None
        self.silent_frames = 0 if voiced else self.silent_frames + 1
        if self.silent_frames >= self._silence_to_end:
            self.in_speech = False
            self._recent.clear()
            return "end"
        return None

    @property
    def onset_frames(self) -> int:
        """Frames before "start" that belong to the utterance (hysteresis + pre-roll)."""
        return self.config.window + round(self.config.pre_roll_s * SAMPLE_RATE / FRAME)
