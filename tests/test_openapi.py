"""The OpenAPI document says what the routes answer; WHIP session OPTIONS is not shadowed."""

from pathlib import Path

import httpx
from aiortc import RTCPeerConnection

from tests.api_helpers import make_settings
from tests.bridge_peers import SpeechTrack, client_peer, host_address, offer_for
from tests.service_helpers import served

KEY = {"Authorization": "Bearer k"}
# the recording platform's download URL carries its own signature instead of a key
SIGNED_DOWNLOAD = "/api/v1/download/transcript/{transcript_id}.json"
PUBLIC = {"/health", "/overlay", SIGNED_DOWNLOAD}
WEBSOCKETS = {
    "/v1/listen",
    "/v1/stream",
    "/api/v1/transcription/stream",
    "/deepgram/v1/listen",
    "/transcribe",
    "/api/transcribe/live/{job_id}",
}
BODILESS = {"/v1/listen/token", "/v1/rooms/{room}/overlay-token"}


async def test_document_lists_every_status_and_body(nats_url: str, tmp_path: Path) -> None:
    settings = make_settings(
        nats_url,
        tmp_path,
        api={"api_keys": ["k"]},
        bridge={"host_addresses": [host_address()]},
        postcall={"run_worker": False},
    )
    async with served(settings) as service, httpx.AsyncClient(base_url=service.http_url) as client:
        document = (await client.get("/openapi.json", headers=KEY)).json()
        paths = document["paths"]
        sockets = {entry["path"]: entry["summary"] for entry in document["x-websockets"]}
        assert set(sockets) == WEBSOCKETS, sockets
        assert all(sockets.values()), sockets
        for path, operations in paths.items():
            for method, operation in operations.items():
                codes = set(operation["responses"])
                what = f"{method.upper()} {path}"
                assert "500" in codes, what
                if path not in PUBLIC:
                    assert "401" in codes, what
                    assert operation["security"] == [{"apiKey": []}], what
                if method in ("post", "put", "patch"):
                    assert {"408", "413"} <= codes, what
                    if path not in BODILESS:
                        assert "requestBody" in operation, what
                for code, response in operation["responses"].items():
                    if code.startswith(("4", "5")) and path not in PUBLIC:
                        assert "application/json" in response["content"], (what, code)
        ask = paths["/v1/transcripts/{job_id}/ask"]["post"]
        schema = ask["requestBody"]["content"]["application/json"]["schema"]
        assert schema["required"] == ["question"]
        assert {"404", "409", "422"} <= set(ask["responses"])
        assert {"404"} <= set(paths["/v1/transcripts/{job_id}"]["get"]["responses"])
        assert "options" in paths["/whip/sessions/{session_id}"]
        assert "HTTPValidationError" not in document["components"].get("schemas", {})

        pc: RTCPeerConnection = client_peer()
        pc.addTrack(SpeechTrack())
        try:
            created = await client.post(
                "/whip/room1/alice",
                content=await offer_for(pc),
                headers={**KEY, "Content-Type": "application/sdp"},
            )
            assert created.status_code == 201, created.text
            location = created.headers["location"]
            options = await client.options(location, headers=KEY)
            assert options.status_code == 204
            assert options.headers["allow"] == "OPTIONS, PATCH, DELETE"
            missing = await client.options("/whip/sessions/nope", headers=KEY)
            assert missing.status_code == 404
            put = await client.put(location, headers=KEY)
            assert put.status_code == 405 and put.headers["allow"] == "DELETE, OPTIONS, PATCH"
            endpoint = await client.options("/whip/room1/bob", headers=KEY)
            assert endpoint.headers["accept-post"] == "application/sdp"
            assert (await client.delete(location, headers=KEY)).status_code == 200
        finally:
            await pc.close()
