"""Getting the diarization models: ``models pull diarization`` from a release mirror (a local
HTTP server standing in for sherpa-onnx's releases), where a service looks for them, and
that running them never needs torch."""

import io
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from engines import diarization_models as model_dirs
from engines.base import ModelNotFoundError
from engines.diarization import (
    EMBEDDING_FILE,
    SEGMENTATION_FILE,
    ModelDirError,
    check_model_dir,
    default_model_dir,
)
from engines.diarization_models import (
    EMBEDDING_URL,
    SEGMENTATION_URL,
    find_model_dir,
    pull_diarization,
    release_urls,
)
from engines.download import ModelArchiveError
from tests.service_helpers import ROOT

SEGMENTATION_ARCHIVE = SEGMENTATION_URL.rsplit("/", 1)[1]
EMBEDDING_NAME = EMBEDDING_URL.rsplit("/", 1)[1]


@pytest.fixture(scope="module")
def prepared() -> Path:
    """The environment's models (``scripts/prepare-diarization``), the source of the mirror."""
    path = model_dirs.installed_model_dir()
    check_model_dir(path)
    return path


class Mirror:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        mirror = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                mirror.requests.append(self.path)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=root))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/releases"

    def publish(self, models: Path, member: str = "model.onnx") -> None:
        """The two release files as sherpa-onnx publishes them."""
        folder = self.root / "releases"
        folder.mkdir(exist_ok=True)
        with tarfile.open(folder / SEGMENTATION_ARCHIVE, "w:bz2") as tar:
            tar.add(models / SEGMENTATION_FILE, f"sherpa-onnx-pyannote-segmentation-3-0/{member}")
            readme = b"pyannote segmentation-3.0 for sherpa-onnx\n"
            info = tarfile.TarInfo("sherpa-onnx-pyannote-segmentation-3-0/README.md")
            info.size = len(readme)
            tar.addfile(info, io.BytesIO(readme))
        (folder / EMBEDDING_NAME).write_bytes((models / EMBEDDING_FILE).read_bytes())


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    served = Mirror(tmp_path / "mirror")
    served.root.mkdir()
    thread = threading.Thread(target=served.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        served.server.shutdown()
        served.server.server_close()


def test_release_urls_are_sherpa_onnx_releases_or_a_mirror_folder() -> None:
    assert release_urls() == (SEGMENTATION_URL, EMBEDDING_URL)
    assert SEGMENTATION_URL.startswith("https://github.com/k2-fsa/sherpa-onnx/releases/download/")
    assert release_urls("http://m.example/x/") == (
        f"http://m.example/x/{SEGMENTATION_ARCHIVE}",
        f"http://m.example/x/{EMBEDDING_NAME}",
    )


def test_cli_pulls_the_published_models_into_the_data_dir(
    mirror: Mirror, prepared: Path, tmp_path: Path
) -> None:
    mirror.publish(prepared)
    data = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, "-m", "roomscribe", "models", "pull", "diarization"]
        + ["--base-url", mirror.url, "--data-dir", str(data)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    dest = default_model_dir(data)
    assert f"diarization models ready in {dest}" in done.stdout
    check_model_dir(dest)
    for name in (SEGMENTATION_FILE, EMBEDDING_FILE):
        assert (dest / name).read_bytes() == (prepared / name).read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == [EMBEDDING_FILE, SEGMENTATION_FILE]
    assert [p.name for p in dest.parent.iterdir()] == ["diarization"]  # no temporary left
    assert find_model_dir(data) == dest

    asked = len(mirror.requests)
    assert pull_diarization(dest, base_url=mirror.url) == dest
    assert len(mirror.requests) == asked  # valid models: nothing downloaded again


def test_a_missing_release_file_fails_clearly_and_leaves_nothing(
    mirror: Mirror, prepared: Path, tmp_path: Path
) -> None:
    mirror.publish(prepared)
    (mirror.root / "releases" / EMBEDDING_NAME).unlink()
    dest = tmp_path / "models" / "diarization"
    with pytest.raises(ModelNotFoundError, match="HTTP 404"):
        pull_diarization(dest, base_url=mirror.url)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_an_archive_without_the_model_is_refused(
    mirror: Mirror, prepared: Path, tmp_path: Path
) -> None:
    mirror.publish(prepared, member="other.onnx")
    dest = tmp_path / "diarization"
    with pytest.raises(ModelDirError, match="holds no model.onnx"):
        pull_diarization(dest, base_url=mirror.url)
    assert not dest.exists()


def test_a_corrupt_archive_is_refused_and_old_models_stay(
    mirror: Mirror, prepared: Path, tmp_path: Path
) -> None:
    mirror.publish(prepared)
    (mirror.root / "releases" / SEGMENTATION_ARCHIVE).write_bytes(b"BZh9 not really")
    dest = tmp_path / "diarization"
    dest.mkdir()
    (dest / SEGMENTATION_FILE).write_bytes(b"an older, broken copy")
    with pytest.raises(ModelArchiveError):
        pull_diarization(dest, base_url=mirror.url)
    assert (dest / SEGMENTATION_FILE).read_bytes() == b"an older, broken copy"


def test_a_service_looks_in_its_data_dir_then_in_the_environment(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert find_model_dir(tmp_path / "empty") == prepared
    own = default_model_dir(tmp_path / "own")
    own.mkdir(parents=True)
    for name in (SEGMENTATION_FILE, EMBEDDING_FILE):
        (own / name).symlink_to(prepared / name)
    assert find_model_dir(tmp_path / "own") == own
    monkeypatch.setattr(model_dirs, "installed_model_dir", lambda: tmp_path / "nothing")
    assert find_model_dir(tmp_path / "empty") == default_model_dir(tmp_path / "empty")


def test_diarizing_never_imports_torch(prepared: Path) -> None:
    script = f"""
import sys
sys.modules["torch"] = None  # any import of torch now raises
import numpy as np
from bench.devsets import librivox
from engines.diarization import Diarizer
clips = librivox()
audio = np.concatenate([clips[0].samples, np.zeros(8000, np.int16), clips[1].samples])
turns = Diarizer({str(prepared)!r}, num_threads=1).diarize(audio.astype(np.float32) / 32768)
assert turns, turns
assert "torch" not in [m for m, v in sys.modules.items() if v is not None]
print(len(turns), "turns")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "turns" in done.stdout
