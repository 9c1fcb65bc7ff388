"""Errors the bridge reports to whoever signalled it (HTTP, NATS)."""

from typing import Any

from protocol.errors import ServiceError


class BridgeError(ServiceError):
    """A :class:`ServiceError` of the bridge; NATS replies carry :meth:`to_json` as ``error``."""

    def to_json(self) -> dict[str, Any]:
        error: dict[str, Any] = self.body()["error"]
        return error
