"""Fetching model archives over HTTP and unpacking them safely."""

import logging
import shutil
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import httpx

from engines.base import EngineError, ModelNotFoundError

log = logging.getLogger(__name__)

Progress = Callable[[int, int | None], None]
"""Called with (bytes so far, total bytes or None when the server did not say)."""

ARCHIVE_SUFFIXES = (".tar.bz2", ".tar.gz", ".tgz", ".tar.xz", ".tar", ".zip")


class ModelDownloadError(EngineError):
    code = "DOWNLOAD_FAILED"


class ModelArchiveError(ModelDownloadError):
    """The archive is corrupt, of an unknown format, or holds unsafe members."""


def archive_stem(filename: str) -> str | None:
    """``name.tar.bz2`` -> ``name``; None when the suffix is not an archive we unpack."""
    lower = filename.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if lower.endswith(suffix) and len(filename) > len(suffix):
            return filename[: -len(suffix)]
    return None


def download(
    url: str, target: Path, *, name: str, timeout: float = 60.0, progress: Progress | None = None
) -> int:
    """Stream ``url`` into ``target``; returns the byte count. HTTP 404 is ModelNotFoundError."""
    received = 0
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=timeout) as response:
            if response.status_code == 404:
                raise ModelNotFoundError(name, f"{url} answered HTTP 404")
            if response.status_code != 200:
                raise ModelDownloadError(f"download of {url} failed: HTTP {response.status_code}")
            header = response.headers.get("content-length")
            total = int(header) if header and header.isdigit() else None
            log.info("downloading %s (%s bytes)", url, total if total is not None else "unknown")
            with target.open("wb") as out:
                for chunk in response.iter_bytes(1 << 20):
                    out.write(chunk)
                    received += len(chunk)
                    if progress is not None:
                        progress(received, total)
    except httpx.HTTPError as exc:
        raise ModelDownloadError(f"download of {url} failed: {type(exc).__name__}: {exc}") from exc
    if total is not None and received != total:
        raise ModelDownloadError(f"download of {url} ended early: {received} of {total} bytes")
    return received


def _check_member(archive: Path, member: str) -> None:
    path = PurePosixPath(member.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise ModelArchiveError(
            f"{archive.name}: member {member!r} would be written outside the model folder"
        )


def unpack(archive: Path, destination: Path) -> None:
    """Unpack a tar (any compression) or zip archive into ``destination`` (which must exist).

    Members with absolute paths, ``..`` parts, links leaving the folder or device files are
    refused before anything is written.
    """
    if zipfile.is_zipfile(archive):
        _unpack_zip(archive, destination)
        return
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(archive, member.name)
                if member.issym() or member.islnk():
                    _check_member(archive, str(PurePosixPath(member.name).parent / member.linkname))
                elif not (member.isfile() or member.isdir()):
                    raise ModelArchiveError(
                        f"{archive.name}: member {member.name!r} is not a plain file"
                    )
            tar.extractall(destination, members=members, filter="data")
    except tarfile.TarError as exc:
        raise ModelArchiveError(f"{archive.name} is not a readable tar/zip archive: {exc}") from exc
    except (EOFError, OSError) as exc:
        raise ModelArchiveError(f"{archive.name} is truncated or corrupt: {exc}") from exc


def _unpack_zip(archive: Path, destination: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                _check_member(archive, name)
            broken = zf.testzip()
            if broken is not None:
                raise ModelArchiveError(f"{archive.name}: member {broken!r} fails its CRC check")
            zf.extractall(destination)
    except zipfile.BadZipFile as exc:
        raise ModelArchiveError(f"{archive.name} is not a readable zip archive: {exc}") from exc


def single_root(folder: Path) -> Path:
    """Archives usually hold one top-level folder: descend into it."""
    entries = [entry for entry in folder.iterdir() if not entry.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder


def install_dir(source: Path, target: Path) -> None:
    """Move a finished folder into place with renames only, replacing an older copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".old-{target.name}")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    source.rename(target)
    if old.exists():
        shutil.rmtree(old)
