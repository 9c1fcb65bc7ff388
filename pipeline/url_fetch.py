"""Fetching ``audio_url`` sources: only public addresses, bounded size and time.

Every resolved address of the host must be public (not private, loopback, link-local,
multicast, reserved or unspecified) unless private URLs are allowed; redirects are followed
by hand so every hop is checked the same way.
"""

import asyncio
import ipaddress
import socket
from urllib.parse import urljoin, urlsplit

import httpx

from protocol.errors import ErrorCode

MAX_REDIRECTS = 5


class DownloadError(Exception):
    """``code`` is FORBIDDEN_URL, DOWNLOAD_FAILED or TOO_LARGE."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


async def check_url(url: str, allow_private: bool) -> None:
    """Raise DownloadError(FORBIDDEN_URL) for a URL that must not be fetched."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DownloadError(
            ErrorCode.FORBIDDEN_URL, f"{url!r}: only http(s) URLs with a host are accepted"
        )
    if allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            parts.hostname,
            parts.port or (443 if parts.scheme == "https" else 80),
            type=socket.SOCK_STREAM,
        )
    except socket.gaierror as exc:
        raise DownloadError(
            ErrorCode.DOWNLOAD_FAILED, f"{parts.hostname}: cannot resolve: {exc}"
        ) from exc
    for info in infos:
        address = str(info[4][0])
        if not _is_public(address):
            raise DownloadError(
                ErrorCode.FORBIDDEN_URL,
                f"{parts.hostname} resolves to non-public address {address}",
            )


async def download(url: str, max_bytes: int, timeout_s: float, allow_private: bool) -> bytes:
    """The body of ``url``; stops reading past ``max_bytes`` (TOO_LARGE)."""
    try:
        async with asyncio.timeout(timeout_s), httpx.AsyncClient(follow_redirects=False) as client:
            for _ in range(MAX_REDIRECTS + 1):
                await check_url(url, allow_private)
                async with client.stream("GET", url) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise DownloadError(
                            ErrorCode.DOWNLOAD_FAILED,
                            f"GET {url} answered HTTP {response.status_code}",
                        )
                    declared = int(response.headers.get("content-length") or 0)
                    if declared > max_bytes:
                        raise DownloadError(
                            ErrorCode.TOO_LARGE,
                            f"{url}: {declared} bytes is over the {max_bytes} byte limit",
                        )
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > max_bytes:
                            raise DownloadError(
                                ErrorCode.TOO_LARGE, f"{url}: more than {max_bytes} bytes"
                            )
                    return bytes(body)
            raise DownloadError(
                ErrorCode.DOWNLOAD_FAILED, f"{url}: more than {MAX_REDIRECTS} redirects"
            )
    except TimeoutError as exc:
        raise DownloadError(
            ErrorCode.DOWNLOAD_FAILED, f"{url}: no complete answer within {timeout_s:.0f} s"
        ) from exc
    except httpx.HTTPError as exc:
        raise DownloadError(
            ErrorCode.DOWNLOAD_FAILED, f"{url}: {type(exc).__name__}: {exc}"
        ) from exc
