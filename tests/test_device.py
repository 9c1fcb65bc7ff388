"""The ``device`` setting of the live and post-call models; the CUDA runs skip without CUDA."""

from pathlib import Path

import pytest

from config import load_settings
from engines.base import EngineError
from engines.device import Device, cuda_devices, resolve_device
from engines.factory import load_engine
from engines.whisper_batch import WhisperModels
from tests.api_helpers import wer
from tests.conftest import librivox_files, librivox_reference, read_wav16

needs_cuda = pytest.mark.skipif(not cuda_devices(), reason="no CUDA device")


def test_the_setting_names_a_device_or_fails_loudly() -> None:
    assert resolve_device("cpu") == Device("cpu")
    assert Device("cpu").compute_type == "int8"
    assert resolve_device("auto").kind == ("cuda" if cuda_devices() else "cpu")
    if not cuda_devices():
        with pytest.raises(EngineError, match="no CUDA device"):
            resolve_device("cuda")


def test_settings_accept_only_the_three_devices(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    assert (settings.live.device, settings.postcall.device) == ("auto", "auto")
    with pytest.raises(ValueError, match="device"):
        load_settings(data_dir=tmp_path, live={"device": "tpu"})


def test_a_cpu_live_engine_runs_on_the_cpu(tmp_path: Path) -> None:
    engine = load_engine(
        "whisper-tiny.en", load_settings(data_dir=tmp_path, live={"device": "cpu"})
    )
    assert engine.model.model.device == "cpu"  # type: ignore[attr-defined]


@pytest.mark.gpu
@needs_cuda
def test_live_and_postcall_models_run_on_cuda(tmp_path: Path) -> None:
    path = librivox_files()[0]
    reference = librivox_reference()[path.stem]
    settings = load_settings(data_dir=tmp_path, live={"device": "cuda"})
    engine = load_engine("whisper-tiny.en", settings)
    assert engine.model.model.device == "cuda"  # type: ignore[attr-defined]
    models = WhisperModels(tmp_path, device=resolve_device("cuda").kind)
    result = models.get("whisper-tiny.en").transcribe(read_wav16(path), language="en")
    assert wer(reference, " ".join(s.text for s in result.segments)) <= 0.15
