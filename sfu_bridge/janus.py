"""Janus VideoRoom adapter: the bot subscribes to every publisher's audio in one peer connection.

Janus's msid is generic, so who is behind a mid comes only from the ``streams`` list of its
``attached``/``updated`` events (``mid``, ``feed_id``, ``feed_display``). A second handle joins the
room as a publisher that never publishes, only to hear ``publishers``/``unpublished``/``leaving``
events. The session's long-poll GET doubles as its keep-alive (Janus drops a session after 60 s
without requests).
"""

import asyncio
import json
import logging
import secrets
from typing import Any

import httpx
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from pipeline.runtime import LiveRuntime
from pipeline.tasks import TaskSet
from pipeline.url_fetch import DownloadError, check_url, guarded_client, read_capped
from protocol import ErrorCode
from protocol.errors import ServiceError
from protocol.openapi import json_body
from sfu_bridge.bridge import Bridge
from sfu_bridge.errors import BridgeError
from sfu_bridge.http import check_bearer, documented, error_response, read_json
from sfu_bridge.peer import PeerSession, TrackOwner

log = logging.getLogger(__name__)

VIDEOROOM = "janus.plugin.videoroom"
EVENT_TIMEOUT_S = 15.0
SESSION_TIMEOUT_S = 60.0  # Janus's default: past it, our session is gone anyway
MIN_IDLE_POLL_S = 1.0
MAX_ANSWER_BYTES = 1024 * 1024
Json = dict[str, Any]


class JanusError(BridgeError):
    def __init__(self, message: str) -> None:
        super().__init__(502, ErrorCode.PROTOCOL, f"Janus: {message}")


def _refusal(what: str, error: Any) -> JanusError:
    """Janus's own words go to the log only; the caller gets what was refused and the code."""
    code = error.get("code", error.get("error_code")) if isinstance(error, dict) else None
    log.warning("Janus refused %s: %r", what, error)
    return JanusError(f"refused {what}" + (f" (error {code})" if isinstance(code, int) else ""))


def _id(reply: Json, what: str) -> int:
    data = reply.get("data")
    value = data.get("id") if isinstance(data, dict) else None
    if not isinstance(value, int) or isinstance(value, bool):
        raise JanusError(f"the {what} answer has no numeric data.id")
    return value


class JanusClient:
    """Janus's HTTP API: one session, its handles, and the long-poll that delivers events.

    Requests go through the outbound address guard (``allow_private`` for a URL the operator
    configured); answers are capped at ``MAX_ANSWER_BYTES``; a long-poll that comes back
    without events waits ``MIN_IDLE_POLL_S`` before the next one.
    """

    def __init__(self, url: str, allow_private: bool = True) -> None:
        self.url = url.rstrip("/")
        self.http = guarded_client(allow_private, httpx.Timeout(10.0, read=45.0), 4)
        self.session_id: int | None = None
        self.events: asyncio.Queue[Json] = asyncio.Queue(1000)
        self._waiting: dict[str, asyncio.Future[Json]] = {}
        self._tasks = TaskSet(f"janus {self.url}")

    async def _call(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        try:
            async with self.http.stream(method, f"{self.url}{path}", **kwargs) as response:
                if response.status_code != 200:
                    raise JanusError(f"{what} answered HTTP {response.status_code}")
                return json.loads(await read_capped(response, MAX_ANSWER_BYTES, what))
        except DownloadError as exc:
            raise JanusError(f"{what}: {exc.message}") from exc
        except httpx.HTTPError as exc:
            raise JanusError(f"{what} failed: {type(exc).__name__}") from exc
        except ValueError as exc:
            raise JanusError(f"{what} answer is not JSON") from exc

    async def _post(self, path: str, body: Json, transaction: str | None = None) -> Json:
        what = str(body.get("janus"))
        message = {**body, "transaction": transaction or secrets.token_hex(8)}
        reply = await self._call("POST", path, what, json=message)
        if not isinstance(reply, dict):
            raise JanusError(f"the {what} answer is not a JSON object")
        if reply.get("janus") == "error":
            raise _refusal(what, reply.get("error"))
        return reply

    async def create(self) -> None:
        self.session_id = _id(await self._post("", {"janus": "create"}), "create")
        self._tasks.spawn(self._poll(), "long-poll")

    async def attach(self, plugin: str = VIDEOROOM) -> int:
        reply = await self._post(f"/{self.session_id}", {"janus": "attach", "plugin": plugin})
        return _id(reply, "attach")

    async def request(self, handle: int, body: Json) -> Json:
        """A synchronous plugin request (list, listparticipants...): its plugin data."""
        reply = await self._post(f"/{self.session_id}/{handle}", {"janus": "message", "body": body})
        data = plugin_data(reply)
        if "error" in data:
            raise _refusal(str(body.get("request")), data)
        return data

    async def send(self, handle: int, body: Json, jsep: Json | None = None) -> Json:
        """An asynchronous plugin request: waits for the event that answers it."""
        what = str(body.get("request"))
        transaction = secrets.token_hex(8)
        future: asyncio.Future[Json] = asyncio.get_running_loop().create_future()
        self._waiting[transaction] = future
        message: Json = {"janus": "message", "body": body}
        if jsep is not None:
            message["jsep"] = jsep
        try:
            await self._post(f"/{self.session_id}/{handle}", message, transaction)
            event = await asyncio.wait_for(future, EVENT_TIMEOUT_S)
        except TimeoutError as exc:
            raise JanusError(f"no answer to {what} within {EVENT_TIMEOUT_S:.0f} s") from exc
        finally:
            self._waiting.pop(transaction, None)
        data = plugin_data(event)
        if "error" in data:
            raise _refusal(what, data)
        return event

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        reached = loop.time()
        while True:
            started = loop.time()
            try:
                batch = await self._call(
                    "GET", f"/{self.session_id}", "long-poll", params={"maxev": 10}
                )
                reached = loop.time()
            except JanusError as exc:
                if loop.time() - reached > SESSION_TIMEOUT_S:
                    batch = {"janus": "error", "error": {"reason": "unreachable"}}
                else:
                    log.warning("Janus long-poll failed: %s", exc.message)
                    await asyncio.sleep(1.0)
                    continue
            events = [
                e for e in (batch if isinstance(batch, list) else [batch]) if isinstance(e, dict)
            ]
            for event in events:
                self._dispatch(event)
            if isinstance(batch, dict) and batch.get("janus") == "error":
                log.warning("Janus session %s is gone: %s", self.session_id, batch.get("error"))
                return
            if not any(e.get("janus") not in ("keepalive", "ack", "success") for e in events):
                await asyncio.sleep(max(0.0, started + MIN_IDLE_POLL_S - loop.time()))

    def _dispatch(self, event: Json) -> None:
        kind = event.get("janus")
        if kind == "keepalive":
            return
        waiting = self._waiting.get(str(event.get("transaction")))
        if waiting is not None and not waiting.done() and kind == "event":
            waiting.set_result(event)
            return
        try:
            self.events.put_nowait(event)
        except asyncio.QueueFull:
            log.warning("Janus event queue full: dropped %s", kind)

    async def detach(self, handle: int) -> None:
        await self._post(f"/{self.session_id}/{handle}", {"janus": "detach"})

    async def aclose(self) -> None:
        await self._tasks.aclose()
        if self.session_id is not None:
            try:
                await self._post(f"/{self.session_id}", {"janus": "destroy"})
            except JanusError as exc:
                log.info("Janus session destroy: %s", exc)
            self.session_id = None
        await self.http.aclose()


def plugin_data(event: Json) -> Json:
    plugin = event.get("plugindata")
    data = plugin.get("data") if isinstance(plugin, dict) else None
    return data if isinstance(data, dict) else {}


class JanusPeer(PeerSession):
    """The bot's subscriber peer connection; mids map to feeds via Janus's ``streams`` list."""

    kind = "janus"

    def __init__(self, bridge: Bridge, room: str) -> None:
        super().__init__(bridge, room)
        self.streams: dict[str, TrackOwner] = {}

    def speaker_for(self, mid: str) -> TrackOwner | None:
        return self.streams.get(mid)

    async def update_streams(self, streams: list[Json]) -> None:
        """A ``streams`` list without a new offer: flush mids whose feed changed."""
        before = {mid: self.current_speaker(mid) for mid in self.feeds}
        self.set_streams(streams)
        for mid, speaker in before.items():
            if self.current_speaker(mid) != speaker:
                await self.rebind(mid)

    def set_streams(self, streams: list[Json]) -> None:
        self.streams = {
            str(stream["mid"]): TrackOwner(str(stream["feed_id"]), stream.get("feed_display"))
            for stream in streams
            if stream.get("type") == "audio"
            and stream.get("feed_id") is not None
            and stream.get("active", True)
        }


class JanusAdapter:
    """Joins one VideoRoom room, follows its publishers and feeds their audio to the bridge."""

    def __init__(
        self,
        url: str,
        room_id: int | str,
        bridge: Bridge,
        display: str = "roomscribe",
        allow_private: bool = True,
    ) -> None:
        self.url = url
        self.room_id = room_id
        self.bridge = bridge
        self.display = display
        self.client = JanusClient(url, allow_private)
        self.peer = JanusPeer(bridge, f"janus-{room_id}")
        self.listener: int | None = None
        self.subscriber: int | None = None
        self.subscribed: set[int] = set()
        self.closed = asyncio.Event()
        self._tasks = TaskSet(f"janus room {room_id}")
        self._leaving = False
        self._cleaned = False

    @property
    def id(self) -> str:
        return self.peer.id

    async def join(self) -> None:
        try:
            await self.client.create()
            self.listener = await self.client.attach()
            joined = await self.client.send(
                self.listener,
                {
                    "request": "join",
                    "ptype": "publisher",
                    "room": self.room_id,
                    "display": self.display,
                },
            )
            self.bridge.add_peer(self.peer)
            self.bridge.peer_closed_hooks.append(self._peer_closed)
            await self._publishers(plugin_data(joined).get("publishers", []))
        except BaseException:
            await self._cleanup()
            raise
        self._tasks.spawn(self._follow(), "events")

    async def _follow(self) -> None:
        while True:
            event = await self.client.events.get()
            data = plugin_data(event)
            sender = event.get("sender")
            if event.get("janus") == "error" and sender is None:
                self.bridge.tasks.spawn(self.leave("disconnected"), f"janus lost {self.room_id}")
                return
            try:
                if event.get("janus") in ("hangup", "detached") and sender == self.subscriber:
                    log.info("Janus hung up the subscriber: %s", event.get("reason"))
                    continue
                if sender == self.subscriber and data.get("videoroom") == "updated":
                    await self._answer(event)
                elif sender == self.listener:
                    if "publishers" in data:
                        await self._publishers(data["publishers"])
                    gone = data.get("unpublished", data.get("leaving"))
                    if isinstance(gone, int):
                        await self._unsubscribe(gone)
            except BridgeError as exc:
                log.warning("Janus room %s: %s", self.room_id, exc.message)

    async def _publishers(self, publishers: list[Json]) -> None:
        wanted = [
            {"feed": pub["id"], "mid": stream["mid"]}
            for pub in publishers
            if pub["id"] not in self.subscribed
            for stream in pub.get("streams", [])
            if stream.get("type") == "audio" and not stream.get("disabled")
        ]
        if not wanted:
            return
        if self.subscriber is None:
            handle = await self.client.attach()
            join = {"request": "join", "ptype": "subscriber", "room": self.room_id}
            try:
                event = await self.client.send(handle, {**join, "streams": wanted})
            except JanusError:
                await self.client.detach(handle)
                raise
            self.subscriber = handle
        else:
            event = await self.client.send(
                self.subscriber, {"request": "update", "subscribe": wanted}
            )
        self.subscribed |= {int(s["feed"]) for s in wanted}
        if "jsep" in event:
            await self._answer(event)

    async def _unsubscribe(self, feed: int) -> None:
        if feed not in self.subscribed or self.subscriber is None:
            return
        self.subscribed.discard(feed)
        if any(speaker.participant == str(feed) for speaker in self.peer.streams.values()):
            event = await self.client.send(
                self.subscriber, {"request": "update", "unsubscribe": [{"feed": feed}]}
            )
            if "jsep" in event:
                await self._answer(event)

    async def _answer(self, event: Json) -> None:
        assert self.subscriber is not None
        streams = plugin_data(event).get("streams", [])
        jsep = event.get("jsep")
        if not jsep or jsep.get("type") != "offer":
            await self.peer.update_streams(streams)
            return
        sdp = await self.peer.accept_offer(jsep["sdp"], lambda _: self.peer.set_streams(streams))
        await self.client.send(
            self.subscriber, {"request": "start"}, {"type": "answer", "sdp": sdp}
        )

    async def _peer_closed(self, peer: PeerSession) -> None:
        if peer is self.peer and not self._leaving:
            self.bridge.tasks.spawn(self._cleanup(), f"janus leave {self.room_id}")

    async def leave(self, reason: str = "left") -> None:
        """Leaves the room: the call ends with ``reason`` unless other peers share its room."""
        self._leaving = True
        await self.bridge.close_peer(self.peer, reason)
        await self._cleanup()

    async def _cleanup(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        self._leaving = True
        await self._tasks.aclose()
        if self._peer_closed in self.bridge.peer_closed_hooks:
            self.bridge.peer_closed_hooks.remove(self._peer_closed)
        for handle in (self.subscriber, self.listener):
            if handle is not None and self.client.session_id is not None:
                try:
                    await self.client.request(handle, {"request": "leave"})
                except JanusError as exc:
                    log.debug("Janus leave: %s", exc)
        await self.client.aclose()
        await self.peer.close("left")
        self.closed.set()


class JanusSession:
    """What :func:`join_janus` hands back: the adapter and the bridge it feeds."""

    def __init__(self, adapter: JanusAdapter, bridge: Bridge, owns_bridge: bool) -> None:
        self.adapter = adapter
        self.bridge = bridge
        self._owns_bridge = owns_bridge

    @property
    def room(self) -> str:
        return self.adapter.peer.room

    async def wait_closed(self) -> None:
        await self.adapter.closed.wait()

    async def leave(self) -> None:
        await self.adapter.leave()
        if self._owns_bridge:
            await self.bridge.aclose()


async def join_janus(
    url: str, room: int | str, runtime: LiveRuntime, bridge: Bridge | None = None
) -> JanusSession:
    """Joins a Janus VideoRoom room; captions flow until :meth:`JanusSession.leave`."""
    owned = bridge is None
    bridge = bridge or Bridge(runtime)
    room_id = int(room) if isinstance(room, str) and room.isdigit() else room
    adapter = JanusAdapter(url, room_id, bridge)
    await adapter.join()
    return JanusSession(adapter, bridge, owned)


class JanusJoin(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="Janus HTTP API base, e.g. http://janus:8088/janus")
    room: int | str
    display: str = "roomscribe"


class JanusJoined(BaseModel):
    session_id: str
    room: str


JANUS_JOIN_ERRORS = documented(400, 401, 415, 502, 503, 504)


def janus_router(bridge: Bridge) -> APIRouter:
    router = APIRouter(prefix="/v1/janus", tags=["janus"])
    adapters: dict[str, JanusAdapter] = {}

    @router.post(
        "/join",
        response_model=JanusJoined,
        responses=JANUS_JOIN_ERRORS,
        openapi_extra={"requestBody": json_body(JanusJoin)},
    )
    async def join(request: Request) -> Response:
        """Join a VideoRoom room of a Janus in ``bridge.janus_urls`` (any public Janus with
        ``bridge.janus_any_url``); answers within ``bridge.janus_join_timeout_s``."""
        try:
            check_bearer(bridge.credentials, request)
            body = await read_json(request, JanusJoin)
            allow_private = await _checked_janus_url(bridge, body.url)
            if bridge.runtime.admission is not None:
                bridge.runtime.admission.check("webrtc")
            adapter = JanusAdapter(body.url, body.room, bridge, body.display, allow_private)
            timeout_s = bridge.settings.janus_join_timeout_s
            try:
                async with asyncio.timeout(timeout_s):
                    await adapter.join()
            except TimeoutError as exc:
                raise BridgeError(
                    504,
                    ErrorCode.UPSTREAM_TIMEOUT,
                    f"Janus: room {body.room} not joined within {timeout_s:g} s",
                ) from exc
        except ServiceError as exc:
            return error_response(exc)
        adapters[adapter.id] = adapter
        bridge.tasks.spawn(_forget(adapters, adapter), f"janus {adapter.id}")
        return JSONResponse(JanusJoined(session_id=adapter.id, room=adapter.peer.room).model_dump())

    @router.delete(
        "/{session_id}", status_code=204, response_model=None, responses=documented(401, 404)
    )
    async def leave(session_id: str, request: Request) -> Response:
        try:
            check_bearer(bridge.credentials, request)
            adapter = adapters.pop(session_id, None)
            if adapter is None:
                raise BridgeError(404, ErrorCode.NOT_FOUND, f"no Janus session {session_id!r}")
        except ServiceError as exc:
            return error_response(exc)
        await adapter.leave()
        return Response(status_code=204)

    return router


async def _checked_janus_url(bridge: Bridge, url: str) -> bool:
    """Whether the URL may reach private addresses: configured ones may, others must pass
    the outbound guard (and ``bridge.janus_any_url`` must allow them at all)."""
    configured = {known.rstrip("/") for known in bridge.settings.janus_urls}
    if url.rstrip("/") in configured:
        return True
    if not bridge.settings.janus_any_url:
        raise BridgeError(
            400, ErrorCode.FORBIDDEN_URL, "url is not one of the configured bridge.janus_urls"
        )
    allow_private = bridge.runtime.settings.api.allow_private_urls
    try:
        await check_url(url, allow_private)
    except DownloadError as exc:
        raise BridgeError(400, exc.code, f"url: {exc.message}") from exc
    return allow_private


async def _forget(adapters: dict[str, JanusAdapter], adapter: JanusAdapter) -> None:
    await adapter.closed.wait()
    adapters.pop(adapter.id, None)
