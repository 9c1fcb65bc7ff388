"""``api.cors_origins``: browser pages on other origins call the REST API and publish over WHIP.

The production composition (``running_service``) behind uvicorn; the browser checks run Debian
Chromium on a page served from another port (another origin), with web security on."""

from pathlib import Path

import httpx
import pytest

from config import Settings, load_settings
from tests.bridge_peers import assert_captions, host_address
from tests.browser import chromium_binary
from tests.conftest import librivox_reference
from tests.service_helpers import served
from tests.whip_page import CLIP, page_server, room_finals, run_page

KEY = "cors-test-key"


def cors_settings(tmp_path: Path, origins: list[str]) -> Settings:
    return load_settings(
        data_dir=tmp_path,
        api={"api_keys": [KEY], "cors_origins": origins},
        bridge={"host_addresses": [host_address()]},
    )


async def preflight(client: httpx.AsyncClient, path: str, origin: str) -> httpx.Response:
    return await client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


async def test_cors_headers_on_preflight_success_and_errors(tmp_path: Path) -> None:
    origin = "https://meet.example.org"
    async with served(cors_settings(tmp_path, [origin])) as service:

        @service.service.app.get("/test-crash", include_in_schema=False)
        async def crash() -> None:
            raise RuntimeError("handler bug")

        async with httpx.AsyncClient(base_url=service.http_url) as client:
            # answered before auth: a browser never sends the key on a preflight
            answer = await preflight(client, "/v1/transcripts", origin)
            assert answer.status_code == 204
            assert answer.headers["access-control-allow-origin"] == origin
            assert answer.headers["access-control-allow-headers"] == "authorization, content-type"
            assert "POST" in answer.headers["access-control-allow-methods"]
            assert "accept-post" not in answer.headers

            whip = await preflight(client, "/whip/room-1/alice", origin)
            assert whip.status_code == 204
            assert whip.headers["accept-post"] == "application/sdp"
            for exposed in ("Location", "ETag", "Link"):
                assert exposed in whip.headers["access-control-expose-headers"]
            session = await preflight(client, "/whip/sessions/abc", origin)
            assert "accept-post" not in session.headers

            # errors carry the headers too, with the one error body
            refused = await client.get("/v1/transcripts", headers={"Origin": origin})
            assert refused.status_code == 401
            assert refused.headers["access-control-allow-origin"] == origin
            assert refused.json()["error"]["code"] == "UNAUTHORIZED"
            crashed = await client.get(
                "/test-crash", headers={"Origin": origin, "Authorization": f"Bearer {KEY}"}
            )
            assert crashed.status_code == 500
            assert crashed.headers["access-control-allow-origin"] == origin
            assert crashed.json()["error"]["code"] == "INTERNAL"
            listed = await client.get(
                "/v1/transcripts", headers={"Origin": origin, "Authorization": f"Bearer {KEY}"}
            )
            assert listed.status_code == 200
            assert listed.headers["access-control-allow-origin"] == origin
            assert "Origin" in listed.headers["vary"]

            # an origin that is not listed gets nothing a browser would accept
            other = await preflight(client, "/v1/transcripts", "https://evil.example")
            assert "access-control-allow-origin" not in other.headers
            assert other.status_code == 401
            plain = await client.get("/health", headers={"Origin": "https://evil.example"})
            assert plain.status_code == 200
            assert "access-control-allow-origin" not in plain.headers


async def test_cors_is_off_by_default_and_star_allows_any(tmp_path: Path) -> None:
    async with (
        served(load_settings(data_dir=tmp_path / "off")) as service,
        httpx.AsyncClient(base_url=service.http_url) as client,
    ):
        answer = await preflight(client, "/v1/transcripts", "https://meet.example.org")
        assert "access-control-allow-origin" not in answer.headers
        health = await client.get("/health", headers={"Origin": "https://meet.example.org"})
        assert "access-control-allow-origin" not in health.headers
    async with (
        served(cors_settings(tmp_path / "star", ["*"])) as service,
        httpx.AsyncClient(base_url=service.http_url) as client,
    ):
        answer = await preflight(client, "/whip/r/p", "https://anywhere.example")
        assert answer.status_code == 204
        assert answer.headers["access-control-allow-origin"] == "*"


def test_cors_origins_setting_reads_from_toml(tmp_path: Path) -> None:
    config = tmp_path / "roomscribe.toml"
    config.write_text('[api]\ncors_origins = ["https://meet.example.org", "*"]\n')
    settings = load_settings(config)
    assert settings.api.cors_origins == ["https://meet.example.org", "*"]


@pytest.mark.skipif(chromium_binary() is None, reason="Debian chromium is not installed")
async def test_page_on_another_origin_publishes_over_whip_and_lists_transcripts(
    tmp_path: Path,
) -> None:
    async with page_server() as page_base:
        async with served(cors_settings(tmp_path, [page_base])) as service:
            async with room_finals(service.service.settings.nats.url) as finals:
                result = await run_page(page_base, service.http_url, KEY)
            async with httpx.AsyncClient(base_url=service.http_url) as client:
                calls = (
                    await client.get("/v1/calls", headers={"Authorization": f"Bearer {KEY}"})
                ).json()["data"]
        assert "error" not in result, result
        assert result["status"] == 201, result
        assert str(result["location"]).startswith("/whip/sessions/"), result
        assert result["etag"], result
        assert result["deleted"] == 200, result
        listed = result["listed"]
        assert isinstance(listed, dict) and listed["status"] == 200, listed
        assert "data" in listed["body"], listed
        assert [c["room"] for c in calls] == ["cors-room"], calls
        assert calls[0]["state"] in ("ended", "handed_over"), calls
        heard = " ".join(f.text for f in finals if f.participant == "alice")
        assert_captions({"alice": librivox_reference()[CLIP]}, {"alice": heard})


@pytest.mark.skipif(chromium_binary() is None, reason="Debian chromium is not installed")
async def test_page_on_an_origin_not_listed_is_blocked_by_the_browser(tmp_path: Path) -> None:
    async with page_server() as page_base:
        allowed = ["https://meet.example.org"]
        async with served(cors_settings(tmp_path, allowed)) as service:
            result = await run_page(page_base, service.http_url, KEY)
            assert "Failed to fetch" in str(result.get("error")), result
            async with httpx.AsyncClient(base_url=service.http_url) as client:
                calls = await client.get("/v1/calls", headers={"Authorization": f"Bearer {KEY}"})
            assert calls.json()["data"] == [], calls.text
