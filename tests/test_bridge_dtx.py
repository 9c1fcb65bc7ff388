"""Opus DTX: the bridge's answer asks for it, a browser that supports it (Chromium) then sends
a packet per 400 ms in silence, and the skipped audio time is silence: the same captions at
the same audio times as from a continuous sender."""

import wave
from pathlib import Path

import httpx
import numpy as np
import pytest

from config import load_settings
from protocol import CaptionFrame
from sfu_bridge.sdp import with_opus_dtx
from tests.bridge_peers import assert_captions, host_address
from tests.browser import chromium_binary
from tests.conftest import LIBRIVOX, librivox_reference, read_wav16
from tests.service_helpers import served
from tests.whip_page import CLIP, page_server, room_finals, run_page

KEY = "dtx-test-key"
TAIL_MS = 6000

CHROME_LIKE = (
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\n"
    "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
)


def test_answer_asks_for_dtx_on_every_opus_payload_only() -> None:
    answer = with_opus_dtx(CHROME_LIKE)
    assert "a=fmtp:111 minptime=10;useinbandfec=1;usedtx=1\r\n" in answer
    assert "a=rtpmap:0 PCMU/8000\r\n" in answer and answer.count("usedtx") == 1
    assert with_opus_dtx(answer) == answer  # already there: unchanged
    bare = "m=audio 9 RTP/AVP 96 97\na=rtpmap:96 opus/48000/2\na=rtpmap:97 OPUS/48000/2\n"
    assert with_opus_dtx(bare) == (
        "m=audio 9 RTP/AVP 96 97\na=rtpmap:96 opus/48000/2\na=fmtp:96 usedtx=1\n"
        "a=rtpmap:97 OPUS/48000/2\na=fmtp:97 usedtx=1\n"
    )
    assert with_opus_dtx("m=audio 9 RTP/AVP 0\na=rtpmap:0 PCMU/8000\n").count("usedtx") == 0


def counter(metrics: str, name: str) -> float:
    line = next(x for x in metrics.splitlines() if x.startswith(f"{name} "))
    return float(line.split()[1])


def microphone_file(folder: Path) -> tuple[Path, float]:
    """The clip, then TAIL_MS of digital silence, as a 48 kHz WAV for the fake microphone."""
    clip = read_wav16(LIBRIVOX / f"{CLIP}.wav")
    samples = np.concatenate([np.zeros(8000, np.int16), clip, np.zeros(16 * TAIL_MS, np.int16)])
    folder.mkdir(parents=True)
    path = folder / "microphone.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(samples.tobytes())
    return path, samples.size / 16000


async def publish_once(tmp_path: Path, dtx: bool) -> tuple[dict[str, float], list[CaptionFrame]]:
    wav, wav_s = microphone_file(tmp_path)
    settings = load_settings(
        data_dir=tmp_path,
        api={"api_keys": [KEY], "cors_origins": ["*"]},
        bridge={"host_addresses": [host_address()], "opus_dtx": dtx},
    )
    async with page_server() as page_base, served(settings) as service:
        async with room_finals(service.service.settings.nats.url) as finals:
            result = await run_page(
                page_base, service.http_url, KEY, tail_ms=500, microphone=(wav, wav_s)
            )
        assert "error" not in result and result["status"] == 201, result
        async with httpx.AsyncClient(base_url=service.http_url) as client:
            text = (await client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})).text
    names = ("frames", "audio_seconds", "gap_seconds")
    return {n: counter(text, f"roomscribe_bridge_{n}_total") for n in names}, finals


@pytest.mark.skipif(chromium_binary() is None, reason="Debian chromium is not installed")
async def test_dtx_sender_sends_few_packets_in_silence_and_captions_stay_the_same(
    tmp_path: Path,
) -> None:
    dtx, dtx_finals = await publish_once(tmp_path / "dtx", dtx=True)
    full, full_finals = await publish_once(tmp_path / "full", dtx=False)
    print(f"DTX {dtx}, continuous {full}")
    clip_s = read_wav16(LIBRIVOX / f"{CLIP}.wav").size / 16000
    # continuous: a packet per 20 ms for clip and tail; DTX: the tail costs ~15 packets
    assert full["frames"] >= 0.8 * (clip_s + TAIL_MS / 1000) / 0.02, full
    assert dtx["frames"] <= 0.6 * full["frames"], (dtx, full)
    assert dtx["gap_seconds"] >= 0.6 * TAIL_MS / 1000, dtx
    assert full["gap_seconds"] <= 0.5, full
    reference = librivox_reference()[CLIP]
    for finals in (dtx_finals, full_finals):
        # one utterance, where the clip is in audio time: no false speech in the silence
        assert len(finals) == 1, finals
        assert finals[0].end <= clip_s + 1.0, finals[0]
        assert_captions({"alice": reference}, {"alice": finals[0].text})
    assert abs(dtx_finals[0].start - full_finals[0].start) <= 0.5
