"""Read-only NATS users scoped to one room's captions, for overlays (embedded NATS only).

The embedded nats-server includes ``overlay-users.conf`` from its config directory::

    authorization {
      users = [
        {user: "roomscribe", password: "<random>", allowed_connection_types: ["STANDARD"]}
        {user: "ov_<id>", password: "<random>", allowed_connection_types: ["WEBSOCKET", "STANDARD"],
         permissions: {subscribe: {allow: ["<prefix>.v1.captions.<room>.>"]},
                       publish: {deny: [">"]}}}
      ]
    }
    no_auth_user: "roomscribe"

A client of the standard port without credentials is the service itself (that port binds to
localhost unless configured otherwise) and keeps full access. A WebSocket client without
credentials is refused, since the service user is not allowed over WebSocket; an overlay
user may only subscribe to its room's caption subjects. Issuing a token, and a token
expiring, rewrite the file and reload the server (SIGHUP): a reload disconnects the
overlays whose token has expired.
"""

import asyncio
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nats

from pipeline.nats_server import EmbeddedNats
from pipeline.tasks import TaskSet, cancel_and_wait
from protocol import Subjects

SERVICE_USER = "roomscribe"


@dataclass(frozen=True)
class OverlayCredential:
    user: str
    password: str
    room: str
    expires_at: float


class OverlayCapacityError(Exception):
    def __init__(self, max_users: int) -> None:
        super().__init__(f"{max_users} overlay tokens are live; wait for one to expire")
        self.max_users = max_users


class OverlayCredentials:
    FILE = "overlay-users.conf"

    def __init__(
        self, directory: Path, subjects: Subjects, ttl_s: float, max_users: int = 256
    ) -> None:
        self.directory = directory
        self.subjects = subjects
        self.ttl_s = ttl_s
        self.max_users = max_users
        self._state_path = directory / "overlay-users.json"
        self._server: EmbeddedNats | None = None
        self._expiry: asyncio.Task[None] | None = None
        self._tasks = TaskSet("overlay credentials")
        state = self._load()
        self._service_password: str = state.get("service_password") or secrets.token_urlsafe(24)
        self._users = [OverlayCredential(**u) for u in state.get("users", [])]

    @classmethod
    def for_data_dir(
        cls, data_dir: Path, subjects: Subjects, ttl_s: float, max_users: int = 256
    ) -> "OverlayCredentials":
        """Kept where :class:`EmbeddedNats` keeps its config (``<data_dir>/nats``)."""
        return cls(Path(data_dir).absolute() / "nats", subjects, ttl_s, max_users)

    def _load(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self._state_path.read_text())
        except (OSError, ValueError):
            return {}
        return data

    @property
    def users(self) -> list[OverlayCredential]:
        return list(self._users)

    def write(self) -> None:
        """Write the include file (before the server starts, and after every change)."""
        now = time.time()
        self._users = [u for u in self._users if u.expires_at > now]
        entries = [
            _user(SERVICE_USER, self._service_password, ["STANDARD"]),
            *(
                _user(
                    u.user,
                    u.password,
                    ["WEBSOCKET", "STANDARD"],
                    {
                        "subscribe": {"allow": [self.subjects.room_captions(u.room)]},
                        "publish": {"deny": [">"]},
                    },
                )
                for u in self._users
            ),
        ]
        config = "authorization {\n  users = [\n    " + "\n    ".join(entries) + "\n  ]\n}\n"
        config += f"no_auth_user: {json.dumps(SERVICE_USER)}\n"
        state = {
            "service_password": self._service_password,
            "users": [asdict(u) for u in self._users],
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        _write_private(self.directory / self.FILE, config)
        _write_private(self._state_path, json.dumps(state))

    def attach(self, server: EmbeddedNats) -> None:
        """The started server whose config includes :attr:`FILE`."""
        self._server = server
        if self._users:
            self._schedule_expiry()

    @property
    def ready(self) -> bool:
        return self._server is not None and self._server.running

    async def issue(self, room: str) -> OverlayCredential:
        """A new read-only user for ``room``'s captions, usable when this returns."""
        server = self._server
        if server is None:
            raise RuntimeError("overlay credentials are not attached to a running nats-server")
        self.subjects.room_captions(room)  # raises InvalidIdError for an unusable id
        now = time.time()
        if sum(u.expires_at > now for u in self._users) >= self.max_users:
            raise OverlayCapacityError(self.max_users)
        credential = OverlayCredential(
            user=f"ov_{secrets.token_hex(8)}",
            password=secrets.token_urlsafe(24),
            room=room,
            expires_at=round(time.time() + self.ttl_s, 3),
        )
        self._users.append(credential)
        self.write()
        server.reload()
        await _wait_accepted(server.url, credential)
        self._schedule_expiry()
        return credential

    def _schedule_expiry(self) -> None:
        if self._expiry is None or self._expiry.done():
            self._expiry = self._tasks.spawn(self._expire(), "expiry")

    async def _expire(self) -> None:
        while self._users and self._server is not None:
            await asyncio.sleep(max(min(u.expires_at for u in self._users) - time.time(), 0.0))
            self.write()
            self._server.reload()

    async def aclose(self) -> None:
        if self._expiry is not None:
            await cancel_and_wait(self._expiry)


def _user(
    name: str, password: str, types: list[str], permissions: dict[str, Any] | None = None
) -> str:
    entry: dict[str, Any] = {
        "user": name,
        "password": password,
        "allowed_connection_types": types,
    }
    if permissions is not None:
        entry["permissions"] = permissions
    return json.dumps(entry)  # JSON objects are valid NATS config maps


def _write_private(path: Path, text: str) -> None:
    temp = path.with_name(path.name + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(temp, path)


async def _wait_accepted(url: str, credential: OverlayCredential, within_s: float = 5.0) -> None:
    """The reload is asynchronous: wait until the server accepts the new user."""

    async def quiet(_: Exception) -> None:
        return None

    deadline = time.monotonic() + within_s
    while True:
        try:
            nc = await nats.connect(
                url,
                user=credential.user,
                password=credential.password,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                connect_timeout=1,
                error_cb=quiet,
            )
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
            continue
        await nc.close()
        return
