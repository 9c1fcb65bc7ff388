"""Janus VideoRoom adapter: the bot subscribes to every publisher's audio in one peer connection.

Janus's msid is generic, so who is behind a mid comes only from the ``streams`` list of its
``attached``/``updated`` events (``mid``, ``feed_id``, ``feed_display``). A second handle joins the
room as a publisher that never publishes, only to hear ``publishers``/``unpublished``/``leaving``
events. The session's long-poll GET doubles as its keep-alive (Janus drops a session after 60 s
without requests).
"""

import asyncio
import logging
import secrets
from typing import Any

import httpx
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from pipeline.runtime import LiveRuntime
from pipeline.tasks import TaskSet
from protocol import ErrorCode
from protocol.errors import ServiceError
from sfu_bridge.bridge import Bridge
from sfu_bridge.errors import BridgeError
from sfu_bridge.http import check_bearer, error_response, read_json
from sfu_bridge.peer import PeerSession, TrackOwner

log = logging.getLogger(__name__)

VIDEOROOM = "janus.plugin.videoroom"
EVENT_TIMEOUT_S = 15.0
SESSION_TIMEOUT_S = 60.0  # Janus's default: past it, our session is gone anyway
Json = dict[str, Any]


class JanusError(BridgeError):
    def __init__(self, message: str) -> None:
        super().__init__(502, ErrorCode.PROTOCOL, f"Janus: {message}")


class JanusClient:
    """Janus's HTTP API: one session, its handles, and the long-poll that delivers events."""

    def __init__(self, url: str, http: httpx.AsyncClient | None = None) -> None:
        self.url = url.rstrip("/")
        self.http = http or httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=45.0))
        self.session_id: int | None = None
        self.events: asyncio.Queue[Json] = asyncio.Queue(1000)
        self._waiting: dict[str, asyncio.Future[Json]] = {}
        self._tasks = TaskSet(f"janus {self.url}")

    async def _post(self, path: str, body: Json) -> Json:
        transaction = secrets.token_hex(8)
        try:
            response = await self.http.post(
                f"{self.url}{path}", json={**body, "transaction": transaction}
            )
            response.raise_for_status()
            reply: Json = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise JanusError(f"{body.get('janus')} request failed: {exc}") from exc
        if reply.get("janus") == "error":
            raise JanusError(reply.get("error", {}).get("reason", "unknown error"))
        return reply

    async def create(self) -> None:
        self.session_id = int((await self._post("", {"janus": "create"}))["data"]["id"])
        self._tasks.spawn(self._poll(), "long-poll")

    async def attach(self, plugin: str = VIDEOROOM) -> int:
        reply = await self._post(f"/{self.session_id}", {"janus": "attach", "plugin": plugin})
        return int(reply["data"]["id"])

    async def request(self, handle: int, body: Json) -> Json:
        """A synchronous plugin request (list, listparticipants...): its plugin data."""
        reply = await self._post(f"/{self.session_id}/{handle}", {"janus": "message", "body": body})
        data: Json = reply.get("plugindata", {}).get("data", {})
        if "error" in data:
            raise JanusError(str(data["error"]))
        return data

    async def send(self, handle: int, body: Json, jsep: Json | None = None) -> Json:
        """An asynchronous plugin request: waits for the event that answers it."""
        transaction = secrets.token_hex(8)
        future: asyncio.Future[Json] = asyncio.get_running_loop().create_future()
        self._waiting[transaction] = future
        message: Json = {"janus": "message", "body": body, "transaction": transaction}
        if jsep is not None:
            message["jsep"] = jsep
        try:
            response = await self.http.post(f"{self.url}/{self.session_id}/{handle}", json=message)
            reply = response.json()
            if reply.get("janus") == "error":
                raise JanusError(reply.get("error", {}).get("reason", "unknown error"))
            event = await asyncio.wait_for(future, EVENT_TIMEOUT_S)
        except (httpx.HTTPError, ValueError, TimeoutError) as exc:
            raise JanusError(f"{body.get('request')} failed: {exc!r}") from exc
        finally:
            self._waiting.pop(transaction, None)
        data = event.get("plugindata", {}).get("data", {})
        if "error" in data:
            raise JanusError(f"{body.get('request')}: {data['error']}")
        return event

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        reached = loop.time()
        while True:
            try:
                response = await self.http.get(
                    f"{self.url}/{self.session_id}", params={"maxev": 10}
                )
                batch = response.json()
                reached = loop.time()
            except (httpx.HTTPError, ValueError) as exc:
                if loop.time() - reached > SESSION_TIMEOUT_S:
                    batch = {"janus": "error", "error": {"reason": f"unreachable: {exc}"}}
                else:
                    log.warning("Janus long-poll failed: %s", exc)
                    await asyncio.sleep(1.0)
                    continue
            for event in batch if isinstance(batch, list) else [batch]:
                self._dispatch(event)
            if isinstance(batch, dict) and batch.get("janus") == "error":
                log.warning("Janus session %s is gone: %s", self.session_id, batch.get("error"))
                return

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
    data: Json = event.get("plugindata", {}).get("data", {})
    return data


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
        self, url: str, room_id: int | str, bridge: Bridge, display: str = "roomscribe"
    ) -> None:
        self.url = url
        self.room_id = room_id
        self.bridge = bridge
        self.display = display
        self.client = JanusClient(url)
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


def janus_router(bridge: Bridge) -> APIRouter:
    router = APIRouter(prefix="/v1/janus", tags=["janus"])
    adapters: dict[str, JanusAdapter] = {}

    @router.post("/join", response_model=JanusJoined)
    async def join(request: Request) -> Response:
        try:
            check_bearer(bridge.settings, request)
            body = await read_json(request, JanusJoin)
            if not body.url.startswith(("http://", "https://")):
                raise BridgeError(
                    400, ErrorCode.INVALID_REQUEST, "url must be an http(s) Janus API address"
                )
            adapter = JanusAdapter(body.url, body.room, bridge, body.display)
            await adapter.join()
        except ServiceError as exc:
            return error_response(exc)
        adapters[adapter.id] = adapter
        bridge.tasks.spawn(_forget(adapters, adapter), f"janus {adapter.id}")
        return JSONResponse(JanusJoined(session_id=adapter.id, room=adapter.peer.room).model_dump())

    @router.delete("/{session_id}", status_code=204, response_model=None)
    async def leave(session_id: str, request: Request) -> Response:
        try:
            check_bearer(bridge.settings, request)
            adapter = adapters.pop(session_id, None)
            if adapter is None:
                raise BridgeError(404, ErrorCode.NOT_FOUND, f"no Janus session {session_id!r}")
        except ServiceError as exc:
            return error_response(exc)
        await adapter.leave()
        return Response(status_code=204)

    return router


async def _forget(adapters: dict[str, JanusAdapter], adapter: JanusAdapter) -> None:
    await adapter.closed.wait()
    adapters.pop(adapter.id, None)
