"""Where models run: the ``device`` setting (``auto``, ``cpu`` or ``cuda``) made concrete.

``auto`` picks CUDA when CTranslate2 sees a CUDA device, else the CPU; ``cuda`` without one
is an error at start-up rather than a silent fall back. faster-whisper runs int8 on the CPU
and int8 weights with float16 activations on CUDA.
"""

from dataclasses import dataclass
from typing import Literal

from engines.base import EngineError

DeviceSetting = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class Device:
    kind: Literal["cpu", "cuda"]

    @property
    def compute_type(self) -> str:
        return "int8" if self.kind == "cpu" else "int8_float16"


def cuda_devices() -> int:
    try:
        import ctranslate2
    except ImportError:
        return 0
    try:
        return int(ctranslate2.get_cuda_device_count())
    except RuntimeError:
        return 0


def resolve_device(setting: DeviceSetting) -> Device:
    if setting == "cpu":
        return Device("cpu")
    found = cuda_devices()
    if setting == "cuda" and not found:
        raise EngineError("device = cuda, but CTranslate2 sees no CUDA device")
    return Device("cuda" if found else "cpu")
