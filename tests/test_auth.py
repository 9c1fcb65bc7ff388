"""One access policy: with API keys set, every route of the served app needs one."""

import json
import re
from pathlib import Path

import fastapi.routing
import httpx
import pytest
from fastapi import FastAPI
from starlette.routing import WebSocketRoute
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.api_helpers import make_settings
from tests.service_helpers import served

KEY, BRIDGE_TOKEN = "api-key-1", "bridge-token-1"
# the recording platform's download URL carries its own signature instead of a key
SIGNED_DOWNLOAD = "/api/v1/download/transcript/{transcript_id}.json"
PUBLIC = {"/health", "/overlay", "/overlay/overlay.js", SIGNED_DOWNLOAD}
# WebSockets that answer a missing key with an error frame and close 4001
WEBSOCKETS = ["/v1/listen", "/v1/stream", "/api/v1/transcription/stream"]
# WebSockets whose protocol has no error message: a missing key closes them with 4001
CLOSING_SOCKETS = {
    "/transcribe": "/transcribe",
    "/api/transcribe/live/{job_id}": "/api/transcribe/live/x",
}
BRIDGE = ("/whip/", "/v1/sessions", "/v1/janus/")


def _routes(app: FastAPI) -> list[tuple[str, set[str], bool]]:
    """(path, methods, is a WebSocket) of every route, those of included routers too."""
    # FastAPI >= 0.16x keeps included routers nested; older versions list every route flat
    flatten = getattr(fastapi.routing, "iter_route_contexts", lambda routes: routes)
    return [
        (
            str(r.path),
            set(getattr(r, "methods", None) or ()),
            isinstance(getattr(r, "original_route", r), WebSocketRoute),
        )
        for r in flatten(app.routes)
    ]


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


@pytest.mark.timeout(120)
async def test_every_route_needs_a_key_and_bridge_tokens_only_open_the_bridge(
    nats_url: str, tmp_path: Path
) -> None:
    settings = make_settings(
        nats_url,
        tmp_path,
        api={"api_keys": [KEY], "allow_private_urls": False},
        bridge={"bearer_tokens": [BRIDGE_TOKEN]},
        postcall={"run_worker": False},
    )
    async with served(settings) as service, httpx.AsyncClient(base_url=service.http_url) as client:
        routes = _routes(service.service.app)
        paths = {path for path, _, _ in routes}
        assert {"/whip/{room}/{participant}", "/v1/sessions", "/v1/janus/join"} <= paths
        assert {
            "/metrics",
            "/docs",
            "/openapi.json",
            "/v1/rooms/{room:path}/overlay-token",
        } <= paths
        checked = 0
        for template, methods, _ in (r for r in routes if not r[2]):
            path = _concrete(template)
            for method in sorted(methods - {"HEAD"}):
                bare = await client.request(method, path)
                wrong = await client.request(method, path, headers={"Authorization": "Bearer no"})
                keyed = await client.request(
                    method, path, headers={"Authorization": f"Bearer {KEY}"}
                )
                narrow = await client.request(
                    method, path, headers={"Authorization": f"Bearer {BRIDGE_TOKEN}"}
                )
                what = f"{method} {template}"
                assert keyed.status_code != 401, what
                if template in PUBLIC:
                    assert bare.status_code != 401, what
                    continue
                checked += 1
                for refused in (bare, wrong):
                    assert refused.status_code == 401, (what, refused.text)
                    assert refused.json()["error"]["code"] == "UNAUTHORIZED", what
                    assert refused.headers["www-authenticate"] == "Bearer"
                if path.startswith(BRIDGE):
                    assert narrow.status_code != 401, what
                else:
                    assert narrow.status_code == 401, what
        assert checked >= 20
        sockets = [path for path, _, socket in routes if socket]
        assert sorted(sockets) == sorted([*WEBSOCKETS, *CLOSING_SOCKETS, "/deepgram/v1/listen"])
        for path in CLOSING_SOCKETS.values():
            async with connect(service.http_url.replace("http", "ws") + path) as socket:
                with pytest.raises(ConnectionClosed) as shut:
                    while True:  # whatever the protocol says first, then the close
                        await socket.recv()
            assert shut.value.rcvd is not None and shut.value.rcvd.code == 4001, path
        for path in WEBSOCKETS:
            async with connect(service.http_url.replace("http", "ws") + path) as socket:
                refusal = json.loads(await socket.recv())
                with pytest.raises(ConnectionClosed) as closed:
                    await socket.recv()
            assert refusal["code"] == "UNAUTHORIZED", (path, refusal)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
        deepgram = service.http_url.replace("http", "ws") + "/deepgram/v1/listen"
        with pytest.raises(InvalidStatus) as denied:
            async with connect(f"{deepgram}?encoding=linear16&sample_rate=16000"):
                pass
        assert denied.value.response.status_code == 401
        ws = service.http_url.replace("http", "ws") + "/v1/listen"
        async with connect(f"{ws}?api_key={KEY}") as socket:
            assert socket.state.name == "OPEN"
        metrics = await client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})
        assert 'roomscribe_auth_failures_total{surface="http"}' in metrics.text
        assert 'roomscribe_auth_failures_total{surface="websocket"} 6.0' in metrics.text


async def test_public_paths_open_metrics_and_docs_only_when_listed(
    nats_url: str, tmp_path: Path
) -> None:
    settings = make_settings(
        nats_url,
        tmp_path,
        api={"api_keys": [KEY], "public_paths": ["/health", "/metrics", "/docs*"]},
        postcall={"run_worker": False},
    )
    async with served(settings) as service, httpx.AsyncClient(base_url=service.http_url) as client:
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/docs")).status_code == 200
        assert (await client.get("/openapi.json")).status_code == 401
        assert (await client.get("/overlay")).status_code == 401
        assert (await client.get("/v1/transcripts")).status_code == 401
