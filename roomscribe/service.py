"""The `serve` process: NATS (embedded or given), live runtime, WebRTC bridge, HTTP API, worker."""

import asyncio
import gc
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass

import nats
import uvicorn
from fastapi import FastAPI

from api.services import Services
from config import Settings
from engines.base import Engine
from pipeline.nats_server import EmbeddedNats, ensure_nats
from pipeline.publisher import NatsPublisher
from pipeline.recognizer_process import RecognizerProcess
from pipeline.runtime import LiveRuntime
from pipeline.tasks import stop_within

log = logging.getLogger("roomscribe.service")


@dataclass
class Running:
    settings: Settings
    app: FastAPI
    runtime: LiveRuntime
    services: Services
    embedded: EmbeddedNats | None


@asynccontextmanager
async def running_service(
    settings: Settings, engine: Engine | None = None
) -> AsyncIterator[Running]:
    """Everything `serve` runs, started in order and stopped in reverse (the app's lifespan
    starts the hand-over of calls, the worker and the webhook sender).

    ``engine``: a live engine already loaded (default: load ``live.model``)."""
    from api.app import create_app
    from api.compat.routes import PUBLIC_PATHS, compat_routers
    from api.listen import listen_router
    from api.overlay import overlay_router
    from api.overlay_credentials import OverlayCredentials
    from pipeline.call import Admission
    from pipeline.call.headroom import Headroom, HeadroomLimits
    from protocol import Subjects
    from sfu_bridge import whip
    from sfu_bridge.bridge import Bridge
    from sfu_bridge.nats_service import BridgeNatsService
    from sfu_bridge.room_claims import RoomClaims
    from sfu_bridge.router import BRIDGE_PATHS, bridge_router

    async with AsyncExitStack() as stack:

        def on_exit(name: str, stop: Callable[[], Awaitable[None]]) -> None:
            stack.push_async_callback(stop_within, name, stop)

        credentials = None
        if settings.overlay.auth and not settings.nats.url:
            subjects = Subjects(settings.nats.subject_prefix)
            credentials = OverlayCredentials.for_data_dir(
                settings.data_dir,
                subjects,
                settings.overlay.token_ttl_s,
                settings.overlay.max_tokens,
            )
            credentials.write()
        include = OverlayCredentials.FILE if credentials else None
        url, embedded = await ensure_nats(settings, include=include)
        if embedded is not None:
            on_exit("the embedded nats-server", embedded.stop)
            if credentials is not None:
                credentials.attach(embedded)
                on_exit("overlay credentials", credentials.aclose)
        nats_settings = settings.nats.model_copy(update={"url": url})
        settings = settings.model_copy(update={"nats": nats_settings})
        publisher = NatsPublisher.from_settings(url, settings.nats)
        await publisher.start()
        on_exit("the caption publisher", publisher.close)
        runtime = await LiveRuntime.create(settings, publisher, engine)
        on_exit("live calls", runtime.aclose)
        nc = await nats.connect(url, max_reconnect_attempts=-1, name="roomscribe-service")
        on_exit("the service's NATS connection", nc.close)
        bridge = Bridge(runtime)
        on_exit("the WebRTC bridge", bridge.aclose)
        claims = RoomClaims(
            nc, runtime.subjects, lambda: invites.held_rooms(), settings.bridge.room_claim_ttl_s
        )
        invites = BridgeNatsService(bridge, nc, claims)
        await invites.start()
        on_exit("bridge invites", invites.aclose)
        services = await Services.open(
            settings, nc, runtime=runtime, routers=[bridge_router(bridge)]
        )
        services.scoped_tokens = {path: settings.bridge.bearer_tokens for path in BRIDGE_PATHS}
        services.accept_post = [(whip.ENDPOINT_PATH, whip.SDP)]
        services.metrics.scrape(bridge.metrics)
        if isinstance(runtime.recognition, RecognizerProcess):
            services.metrics.scrape(runtime.recognition.metrics)
        services.bot_id = claims.bot_id
        services.publisher = publisher
        headroom = Headroom(
            HeadroomLimits.from_settings(settings.limits),
            loop_lag=services.loop_lag,
            backlog_s=runtime.recognition.backlog_s,
            udp_drops=bridge.udp_drops,
        )
        admission = Admission.from_settings(settings.limits, services.metrics.registry, headroom)
        runtime.admission = admission
        websocket_url = embedded.websocket_url if embedded else None
        services.routers += [
            listen_router(runtime, admission, settings, services.metrics),
            overlay_router(settings, websocket_url, credentials),
            *compat_routers(runtime, admission, settings, services.metrics),
        ]
        services.public_paths += PUBLIC_PATHS
        app = create_app(services)
        stack.enter_context(frozen_heap())
        yield Running(settings, app, runtime, services, embedded)


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Moves what is alive once the service is up (modules, models, routes: hundreds of
    thousands of objects) out of the collector's reach: a full collection walks every
    tracked object on the event-loop thread, 0.08 s for a fresh service and more than
    0.4 s for a heap of 800,000 objects, and the loop waits for it."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGINT/SIGTERM after its own shutdown, which would cancel ours
    (draining NATS, ending calls); here a signal only asks the server to exit."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {
            sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


async def serve(settings: Settings) -> None:
    async with running_service(settings) as service:
        api = settings.api
        server = _Server(
            uvicorn.Config(
                service.app,
                host=api.host,
                port=api.port,
                log_level="info",
                timeout_graceful_shutdown=api.shutdown_grace_s,
            )
        )
        nats_line = str(service.settings.nats.url)
        if service.embedded is not None:
            nats_line += f" (embedded; WebSocket {service.embedded.websocket_url})"
        print(
            f"roomscribe: http://{api.host}:{api.port}  NATS {nats_line}  data {settings.data_dir}",
            flush=True,
        )
        await server.serve()


async def run_worker(settings: Settings) -> None:
    from pipeline.worker import run_worker as worker_loop

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await worker_loop(settings, stop, on_ready=lambda: print("worker ready", flush=True))


async def join_janus(settings: Settings, url: str, room: int) -> None:
    """One Janus room without the HTTP API: ended calls are handed over to post-call like
    under ``serve`` (and run here when ``postcall.run_worker``)."""
    from sfu_bridge import janus

    url_nats, embedded = await ensure_nats(settings)
    publisher = NatsPublisher.from_settings(url_nats, settings.nats)
    await publisher.start()
    runtime = await LiveRuntime.create(settings, publisher)
    nc = await nats.connect(url_nats, max_reconnect_attempts=-1, name="roomscribe-janus")
    services = await Services.open(settings, nc, runtime=runtime)
    await services.start()
    try:
        session = await janus.join_janus(url, room, runtime)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"joined Janus room {room}; publishing captions on {url_nats}", flush=True)
        stopped = asyncio.ensure_future(stop.wait())
        closed = asyncio.ensure_future(session.wait_closed())
        await asyncio.wait({stopped, closed}, return_when=asyncio.FIRST_COMPLETED)
        for waiter in (stopped, closed):
            waiter.cancel()
        await session.leave()
    finally:
        await services.stop()
        await nc.close()
        await runtime.aclose()
        await publisher.close()
        if embedded is not None:
            await embedded.stop()
