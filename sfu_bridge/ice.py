"""ICE configuration: the servers from settings (none by default) and host-address restriction.

aioice has no option to choose the interfaces it gathers on, so :func:`install_host_filter`
wraps its address lookup once; the wrapper filters only while :func:`gather_on` is active in
the calling task's context, so peers created elsewhere gather as before.
"""

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer

_allowed: ContextVar[frozenset[str] | None] = ContextVar("roomscribe_ice_hosts", default=None)
_installed = False


def ice_configuration(servers: Sequence[dict[str, Any]]) -> RTCConfiguration:
    """``servers`` are WebRTC-style dicts: ``{"urls": ..., "username": ..., "credential": ...}``."""
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(
                urls=server["urls"],
                username=server.get("username"),
                credential=server.get("credential"),
            )
            for server in servers
        ]
    )


def install_host_filter() -> None:
    global _installed
    if _installed:
        return
    original: Callable[..., list[str]] = aioice.ice.get_host_addresses

    def filtered(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses = original(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
        allowed = _allowed.get()
        return addresses if allowed is None else [a for a in addresses if a in allowed]

    aioice.ice.get_host_addresses = filtered
    _installed = True


@contextlib.contextmanager
def gather_on(addresses: Sequence[str]) -> Iterator[None]:
    """Restrict host candidates gathered inside this block to ``addresses`` (empty: all)."""
    install_host_filter()
    token = _allowed.set(frozenset(addresses) if addresses else None)
    try:
        yield
    finally:
        _allowed.reset(token)
