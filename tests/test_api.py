"""The REST API end to end: real app, real worker, real nats-server, whisper tiny.en."""

import asyncio
import io
import json
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import srt
import webvtt

from pipeline.jobs import JobKind
from pipeline.url_fetch import DownloadError, check_url, download
from protocol.webhooks import SIGNATURE_HEADER, verify
from tests.api_helpers import make_settings, running_api, wait_done, wer
from tests.conftest import librivox_files, librivox_reference
from tests.webhook_receiver import webhook_receiver


@contextmanager
def file_server(folder: Path) -> Iterator[str]:
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def _upload(
    client: httpx.AsyncClient, name: str, data: bytes, **fields: str
) -> httpx.Response:
    return await client.post("/v1/transcripts", files={"file": (name, data)}, data=fields)


async def test_ops_endpoints_and_request_headers(nats_url: str, tmp_path: Path) -> None:
    async with running_api(make_settings(nats_url, tmp_path)) as (client, _):
        spec = (await client.get("/openapi.json")).json()
        for path in (
            "/v1/transcripts",
            "/v1/transcripts/{job_id}",
            "/v1/calls/{call_id}/transcribe",
            "/v1/models",
        ):
            assert path in spec["paths"]
        assert (
            "multipart/form-data"
            in spec["paths"]["/v1/transcripts"]["post"]["requestBody"]["content"]
        )
        assert (await client.get("/docs")).status_code == 200

        health = await client.get("/health", headers={"X-Request-ID": "client-id-1"})
        body = health.json()
        assert body.pop("timestamp").endswith("Z")
        assert body == {"status": "ok", "nats": True, "problems": []}
        assert health.headers["X-Request-ID"] == "client-id-1"
        assert float(health.headers["X-Process-Time-Ms"]) >= 0
        generated = await client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})
        assert len(generated.headers["X-Request-ID"]) == 32

        models = {m["name"]: m for m in (await client.get("/v1/models")).json()["data"]}
        assert models["whisper-tiny.en"]["present"] is True
        assert "whisper-base" in models

        missing = await client.get("/v1/transcripts/tr_000000000000deadbeef")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "NOT_FOUND"
        assert "X-Request-ID" in missing.headers
        metrics = (await client.get("/metrics")).text
        assert (
            'roomscribe_http_requests_total{method="GET",route="/health",status="200"} 2.0'
            in metrics
        )
        assert 'route="/v1/transcripts/{job_id}",status="404"' in metrics


async def test_api_keys_guard_v1_but_not_health(nats_url: str, tmp_path: Path) -> None:
    settings = make_settings(nats_url, tmp_path, api={"api_keys": ["k1", "k2"]})
    async with running_api(settings) as (client, _):
        denied = await client.get("/v1/transcripts")
        assert denied.status_code == 401
        assert denied.json()["error"]["code"] == "UNAUTHORIZED"
        assert (
            await client.get("/v1/transcripts", headers={"Authorization": "Bearer nope"})
        ).status_code == 401
        assert (
            await client.get("/v1/transcripts", headers={"Authorization": "Bearer k2"})
        ).status_code == 200
        assert (await client.get("/health")).status_code == 200


async def test_upload_transcribes_exports_notifies_and_deletes(
    nats_url: str, tmp_path: Path
) -> None:
    wav = librivox_files()[0]
    reference = librivox_reference()[wav.stem]
    with webhook_receiver() as receiver:
        async with running_api(make_settings(nats_url, tmp_path)) as (client, services):
            created = await _upload(
                client, wav.name, wav.read_bytes(), webhook_url=receiver.url, language="en"
            )
            assert created.status_code == 202, created.text
            assert created.json()["status"] == "queued"
            job_id = created.json()["id"]
            body = await wait_done(client, job_id)
            assert body["status"] == "completed", body
            transcript = body["transcript"]
            text = " ".join(s["text"] for s in transcript["segments"])
            assert wer(reference, text) <= 0.15, text
            assert transcript["model"] == "whisper-tiny.en"
            assert all(s["words"] for s in transcript["segments"])

            subtitles = list(srt.parse((await client.get(f"/v1/transcripts/{job_id}.srt")).text))
            assert subtitles and subtitles[0].start.total_seconds() >= 0
            vtt = await client.get(f"/v1/transcripts/{job_id}.vtt")
            assert vtt.headers["content-type"].startswith("text/vtt")
            captions = webvtt.from_buffer(io.StringIO(vtt.text))
            assert wer(reference, " ".join(c.text for c in captions)) <= 0.15
            assert (
                json.loads((await client.get(f"/v1/transcripts/{job_id}.json")).text)["id"]
                == job_id
            )
            assert "dashwood" in (await client.get(f"/v1/transcripts/{job_id}.txt")).text.lower()

            (hit,) = await asyncio.to_thread(receiver.wait_for, 1)
            assert verify("test-secret", hit.body, hit.headers[SIGNATURE_HEADER])
            event = json.loads(hit.body)
            assert (event["type"], event["data"]["id"]) == ("transcript.done", job_id)
            log = (await client.get(f"/v1/transcripts/{job_id}/webhooks")).json()["data"]
            assert [(d["event"]["type"], d["status"]) for d in log] == [
                ("transcript.done", "delivered")
            ]

            listed = (await client.get("/v1/transcripts", params={"limit": 1})).json()
            assert [item["id"] for item in listed["data"]] == [job_id]
            assert listed["next_cursor"] is None

            assert (await client.delete(f"/v1/transcripts/{job_id}")).status_code == 204
            assert (await client.get(f"/v1/transcripts/{job_id}")).status_code == 404
            assert (await client.get(f"/v1/transcripts/{job_id}.srt")).status_code == 404
            assert await services.store.file_names(job_id) == []


async def test_bad_input_gets_precise_errors_and_service_keeps_serving(
    nats_url: str, tmp_path: Path
) -> None:
    wav = librivox_files()[1]
    mp3 = tmp_path / "speech.mp3"
    await asyncio.to_thread(
        subprocess.run,
        ["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav), "-b:a", "64k", str(mp3)],
        check=True,
    )
    truncated = mp3.read_bytes()[: mp3.stat().st_size // 3]
    (tmp_path / "site").mkdir()
    settings = make_settings(nats_url, tmp_path, api={"max_upload_mb": 0.25})
    async with running_api(settings) as (client, services):
        jobs = {
            "not audio": (
                await _upload(client, "notes.txt", b"hello, this is plainly text\n" * 50)
            ).json()["id"],
            "empty": (await _upload(client, "empty.wav", b"")).json()["id"],
            "truncated": (await _upload(client, "cut.mp3", truncated)).json()["id"],
        }
        with file_server(tmp_path / "site") as site:
            url_job = await client.post(
                "/v1/transcripts", json={"audio_url": f"{site}/missing.wav"}
            )
            assert url_job.status_code == 202
            jobs["404 url"] = url_job.json()["id"]
            expected = {
                "not audio": "UNSUPPORTED_FORMAT",
                "empty": "EMPTY_AUDIO",
                "truncated": "INVALID_AUDIO",
                "404 url": "DOWNLOAD_FAILED",
            }
            for what, job_id in jobs.items():
                body = await wait_done(client, job_id)
                assert body["status"] == "failed", (what, body)
                assert body["error"]["code"] == expected[what], (what, body["error"])
                assert body["error"]["message"]

        too_big = await _upload(client, "big.wav", b"\0" * 400_000)
        assert too_big.status_code == 413
        assert too_big.json()["error"]["code"] == "TOO_LARGE"

        sent = 0

        async def chunked_body() -> AsyncIterator[
            bytes
        ]:  # no Content-Length: counted as it streams
            nonlocal sent
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n'
            for _ in range(200):
                sent += 64 * 1024
                yield b"\0" * (64 * 1024)
            yield b"\r\n--b--\r\n"

        streamed = await client.post(
            "/v1/transcripts",
            content=chunked_body(),
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        )
        assert (streamed.status_code, streamed.json()["error"]["code"]) == (413, "TOO_LARGE")
        assert sent < 1024 * 1024  # refused after ~0.3 MB, not after reading all 12.8 MB

        services.settings.api.allow_private_urls = False
        for url in (
            "http://127.0.0.1:9/a.wav",
            "http://10.1.2.3/a.wav",
            "http://[::1]/a.wav",
            "http://169.254.169.254/x",
            "ftp://example.com/a.wav",
        ):
            refused = await client.post("/v1/transcripts", json={"audio_url": url})
            assert refused.status_code == 400, url
            assert refused.json()["error"]["code"] == "FORBIDDEN_URL", url
        hook = await _upload(
            client, "a.wav", wav.read_bytes(), webhook_url="http://localhost:1/hook"
        )
        assert (hook.status_code, hook.json()["error"]["code"]) == (400, "FORBIDDEN_URL")
        services.settings.api.allow_private_urls = True

        malformed = await client.post(
            "/v1/transcripts",
            content=b'{"audio_url": ',
            headers={"Content-Type": "application/json"},
        )
        assert (malformed.status_code, malformed.json()["error"]["code"]) == (
            400,
            "INVALID_REQUEST",
        )
        wrong = await client.post(
            "/v1/transcripts", json={"audio_url": "http://x/a.wav", "speakers_expected": 0}
        )
        assert (wrong.status_code, wrong.json()["error"]["code"]) == (422, "INVALID_REQUEST")
        assert "speakers_expected" in wrong.json()["error"]["message"]
        for field, value, message in (
            ("speakers_expected", True, "speakers_expected: Input should be a valid integer"),
            ("speakers_expected", "3", "speakers_expected: Input should be a valid integer"),
            ("diarize", 1, "diarize: Input should be a valid boolean"),
        ):
            coerced = await client.post(
                "/v1/transcripts", json={"audio_url": "http://x/a.wav", field: value}
            )
            assert (coerced.status_code, coerced.json()["error"]["message"]) == (422, message)
        kinds = await _upload(client, "a.wav", b"RIFF", redact_pii="email,passport")
        assert (kinds.status_code, kinds.json()["error"]["code"]) == (422, "INVALID_REQUEST")
        no_file = await client.post(
            "/v1/transcripts", data={"language": "en"}, files={"other": ("x", b"1")}
        )
        assert no_file.status_code == 400
        plain = await client.post(
            "/v1/transcripts", content=b"raw", headers={"Content-Type": "audio/wav"}
        )
        assert (plain.status_code, plain.json()["error"]["code"]) == (415, "UNSUPPORTED_FORMAT")

        unknown = "tr_000000000000deadbeef"
        for method, path in (
            ("GET", f"/v1/transcripts/{unknown}"),
            ("GET", f"/v1/transcripts/{unknown}.vtt"),
            ("DELETE", f"/v1/transcripts/{unknown}"),
            ("GET", f"/v1/transcripts/{unknown}/webhooks"),
            ("POST", f"/v1/transcripts/{unknown}/segments/s0000/retranscribe"),
            ("POST", "/v1/calls/no-such-call/transcribe"),
        ):
            response = await client.request(method, path)
            assert (response.status_code, response.json()["error"]["code"]) == (404, "NOT_FOUND"), (
                path
            )
        ask = await client.post(f"/v1/transcripts/{unknown}/ask", json={"question": "who?"})
        assert ask.status_code == 404

        js = services.store.js
        await js.publish(services.store.work_subject(JobKind.BATCH), b"not json")
        await js.publish(services.store.work_subject(JobKind.BATCH), b'{"id": "tr_gone"}')
        speech = librivox_files()[0]
        good = await _upload(client, speech.name, speech.read_bytes())
        body = await wait_done(client, good.json()["id"])
        assert body["status"] == "completed"
        text = " ".join(s["text"] for s in body["transcript"]["segments"])
        assert wer(librivox_reference()[speech.stem], text) <= 0.15, text


async def test_url_job_and_segment_retranscribe(nats_url: str, tmp_path: Path) -> None:
    wav = librivox_files()[2]
    site = tmp_path / "site"
    site.mkdir()
    (site / "talk.wav").write_bytes(wav.read_bytes())
    async with running_api(make_settings(nats_url, tmp_path)) as (client, _):
        with file_server(site) as base:
            created = await client.post(
                "/v1/transcripts",
                json={"audio_url": f"{base}/talk.wav", "model": "whisper-tiny.en"},
            )
            job_id = created.json()["id"]
            body = await wait_done(client, job_id)
        assert body["status"] == "completed", body
        assert body["source"]["url"].endswith("/talk.wav")
        segment = body["transcript"]["segments"][0]

        again = await client.post(
            f"/v1/transcripts/{job_id}/segments/{segment['id']}/retranscribe", json={"beam_size": 2}
        )
        assert again.status_code == 202, again.text
        assert again.json()["transcript_id"] == job_id
        assert (await wait_done(client, again.json()["id"]))["status"] == "completed"
        revised = (await client.get(f"/v1/transcripts/{job_id}")).json()["transcript"]
        (same,) = [s for s in revised["segments"] if s["id"] == segment["id"]]
        assert wer(librivox_reference()[wav.stem], same["text"]) <= 0.2
        assert abs(same["start"] - segment["start"]) < 0.5
        missing = await client.post(f"/v1/transcripts/{job_id}/segments/nope/retranscribe")
        assert missing.status_code == 404


async def test_download_caps_size_and_refuses_private_hosts(tmp_path: Path) -> None:
    (tmp_path / "big.bin").write_bytes(b"x" * 50_000)
    with file_server(tmp_path) as base:
        assert len(await download(f"{base}/big.bin", 60_000, 5.0, allow_private=True)) == 50_000
        with pytest.raises(DownloadError) as big:
            await download(f"{base}/big.bin", 10_000, 5.0, allow_private=True)
        assert big.value.code == "TOO_LARGE"
        with pytest.raises(DownloadError) as private:
            await download(f"{base}/big.bin", 60_000, 5.0, allow_private=False)
        assert private.value.code == "FORBIDDEN_URL"
        with pytest.raises(DownloadError) as missing:
            await download(f"{base}/nope.bin", 60_000, 5.0, allow_private=True)
        assert missing.value.code == "DOWNLOAD_FAILED"
    for url in (
        "http://localhost/a",
        "http://[fe80::1]/a",
        "http://[::ffff:127.0.0.1]/a",
        "http://0.0.0.0/a",
    ):
        with pytest.raises(DownloadError) as refused:
            await check_url(url, allow_private=False)
        assert refused.value.code == "FORBIDDEN_URL", url
