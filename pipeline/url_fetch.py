"""Outbound HTTP on behalf of API callers (``audio_url``, webhooks, Janus): one guard.

Only globally routable addresses are reached unless private URLs are allowed. An address that
embeds an IPv4 address (IPv4-mapped or -compatible, 6to4, Teredo, NAT64) is judged by that IPv4 address too.
The guard sits in the connection itself (:func:`guarded_client`): the host is resolved, every
address it resolves to must pass, and the socket connects to the address just checked, so a
second DNS answer cannot slip in between check and connect (no rebinding window), and every
redirect hop and every retry is checked the same way. TLS still verifies the host name.
"""

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

from protocol.errors import ErrorCode

MAX_REDIRECTS = 5
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# the last 32 bits are an IPv4 address: NAT64 (RFC 6052, 8215) and IPv4-compatible (::a.b.c.d)
_LOW_IPV4 = tuple(ipaddress.ip_network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48", "::/96"))


class DownloadError(Exception):
    """``code`` is FORBIDDEN_URL, DOWNLOAD_FAILED or TOO_LARGE."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    found = [v4 for v4 in (ip.ipv4_mapped, ip.sixtofour) if v4 is not None]
    if ip.teredo is not None:
        found += list(ip.teredo)
    if any(ip in network for network in _LOW_IPV4):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def is_public(address: str | IPAddress) -> bool:
    """Globally routable unicast, and so is any IPv4 address it embeds."""
    ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
    if ip.is_multicast or not ip.is_global:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        return all(is_public(v4) for v4 in _embedded_ipv4(ip))
    return True


async def resolve(host: str, port: int, allow_private: bool) -> list[str]:
    """The addresses to connect to; FORBIDDEN_URL if any of them is not public."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise DownloadError(ErrorCode.DOWNLOAD_FAILED, f"{host}: cannot resolve: {exc}") from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not allow_private:
        for address in addresses:
            if not is_public(address):
                raise DownloadError(
                    ErrorCode.FORBIDDEN_URL, f"{host} resolves to non-public address {address}"
                )
    return addresses


def _check_shape(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise DownloadError(ErrorCode.FORBIDDEN_URL, f"{url!r}: invalid port") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DownloadError(
            ErrorCode.FORBIDDEN_URL, f"{url!r}: only http(s) URLs with a host are accepted"
        )
    return parts.hostname, port


async def check_url(url: str, allow_private: bool) -> None:
    """Raise DownloadError(FORBIDDEN_URL) for a URL that must not be fetched (at submission;
    the connection is checked again by :func:`guarded_client`)."""
    host, port = _check_shape(url)
    if not allow_private:
        await resolve(host, port, allow_private)


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Resolves and checks the host, then connects to the checked address itself."""

    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await resolve(host, port, self.allow_private)
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error or httpcore.ConnectError(f"{host}: no address")

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise DownloadError(ErrorCode.FORBIDDEN_URL, "unix sockets are not reachable")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, allow_private: bool, limits: httpx.Limits) -> None:
        super().__init__(trust_env=False, limits=limits)
        # the same pool httpx builds, with the connection step replaced by the guard
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_PinnedBackend(allow_private),
        )


def guarded_client(
    allow_private: bool, timeout: float | httpx.Timeout, max_connections: int = 20
) -> httpx.AsyncClient:
    """An httpx client whose every connection goes through the address guard; no proxies
    from the environment, no redirects followed (callers check each hop)."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=5)
    return httpx.AsyncClient(
        transport=_GuardedTransport(allow_private, limits),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
    )


async def read_capped(response: httpx.Response, max_bytes: int, what: str) -> bytes:
    """The body of a streamed response; TOO_LARGE past ``max_bytes``, declared or not."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise DownloadError(
            ErrorCode.TOO_LARGE, f"{what}: {declared} bytes is over the {max_bytes} byte limit"
        )
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise DownloadError(ErrorCode.TOO_LARGE, f"{what}: more than {max_bytes} bytes")
    return bytes(body)


async def download(url: str, max_bytes: int, timeout_s: float, allow_private: bool) -> bytes:
    """The body of ``url``; stops reading past ``max_bytes`` (TOO_LARGE)."""
    try:
        async with asyncio.timeout(timeout_s), guarded_client(allow_private, timeout_s) as client:
            for _ in range(MAX_REDIRECTS + 1):
                _check_shape(url)
                async with client.stream("GET", url) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise DownloadError(
                            ErrorCode.DOWNLOAD_FAILED,
                            f"GET {url} answered HTTP {response.status_code}",
                        )
                    return await read_capped(response, max_bytes, url)
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
