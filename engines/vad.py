"""Voice activity: webrtcvad as the cheap per-frame gate with hysteresis."""

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


class SpeechGate:
    """Feeds 30 ms frames and reports where speech starts and ends (in samples)."""

    def __init__(self, config: VadConfig) -> None:
        self.config = config
        self._vad = webrtcvad.Vad(config.mode)
        self._recent: list[bool] = []
        self.in_speech = False
        self.silent_frames = 0
        self._silence_to_end = max(1, round(config.min_silence_s * SAMPLE_RATE / FRAME))

    def frame(self, samples: np.ndarray) -> str | None:
        """One 30 ms float32 frame -> "start", "end" or None."""
        pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        voiced = self._vad.is_speech(pcm, SAMPLE_RATE)
        self._recent = [*self._recent[-(self.config.window - 1) :], voiced]
        if not self.in_speech:
            if sum(self._recent) >= self.config.start_frames:
                self.in_speech = True
                self.silent_frames = 0
                return "start"
            return None
        self.silent_frames = 0 if voiced else self.silent_frames + 1
        if self.silent_frames >= self._silence_to_end:
            self.in_speech = False
            self._recent = []
            return "end"
        return None

    @property
    def onset_frames(self) -> int:
        """Frames before "start" that belong to the utterance (hysteresis + pre-roll)."""
        return self.config.window + round(self.config.pre_roll_s * SAMPLE_RATE / FRAME)
