"""Received audio decoded on the event loop (``bridge.decode_on_loop``): the same 16 kHz audio
as aiortc's own decoder thread gives, captions from real peers, bad packets skipped."""

import asyncio
import fractions
import logging
import threading
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc.codecs.opus import OpusDecoder, OpusEncoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from pipeline.pcm import PcmConverter
from sfu_bridge.receive_decode import LoopDecoder, decode_on_loop
from tests.bridge_peers import (
    SpeechTrack,
    answer,
    assert_captions,
    bridge_settings,
    client_peer,
    finals,
    offer_for,
    running_bridge,
    utterance,
    wait_until,
)
from tests.conftest import librivox_files, librivox_reference

pytestmark = pytest.mark.timeout(120)

CLIP = "sense_and_sensibility_01_austen_64kb-0890"  # 5.3 s
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)


def opus_packets(samples: np.ndarray) -> list[JitterFrame]:
    """``samples`` (16 kHz mono) as a sender's Opus packets, with their RTP timestamps."""
    encoder, packets = OpusEncoder(), []
    for start in range(0, samples.size - 320 + 1, 320):
        frame = av.AudioFrame.from_ndarray(
            samples[start : start + 320].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate, frame.pts = 16000, start
        frame.time_base = fractions.Fraction(1, 16000)
        payloads, timestamp = encoder.encode(frame)
        packets += [JitterFrame(payload, timestamp) for payload in payloads]
    return packets


def to_16k(frames: list[av.AudioFrame]) -> tuple[np.ndarray, list[float]]:
    converter, samples, times = PcmConverter(), [], []
    for frame in frames:
        for chunk, at in converter.add(frame) or []:
            samples.append(chunk)
            times.append(at)
    for chunk, at in converter.flush():
        samples.append(chunk)
        times.append(at)
    return np.concatenate(samples), times


def test_loop_decoder_gives_the_audio_of_aiortcs_decoder_and_skips_a_bad_packet(
    caplog: pytest.LogCaptureFixture,
) -> None:
    librivox_files()
    packets = opus_packets(utterance(CLIP))
    stock = OpusDecoder()
    reference = to_16k([f for p in packets for f in stock.decode(p)])  # type: ignore[misc]

    async def decode() -> tuple[list[av.AudioFrame], LoopDecoder]:
        output: asyncio.Queue[av.AudioFrame | None] = asyncio.Queue()
        decoder = LoopDecoder(output, "alice-track")  # type: ignore[arg-type]
        for index, packet in enumerate(packets):
            if index == 100:
                decoder.put((OPUS, JitterFrame(b"\xff\xff\xff", packet.timestamp)))
            decoder.put((OPUS, packet))
        decoder.put(None)
        decoder.get()  # returns once stopped: aiortc's idle thread ends the track
        frames = []
        while not output.empty():
            frames.append(output.get_nowait())
        return frames, decoder  # type: ignore[return-value]

    with caplog.at_level(logging.WARNING, "sfu_bridge.receive_decode"):
        frames, decoder = asyncio.run(decode())
    assert decoder.decode_errors == 1 and decoder.frames == len(packets)
    assert "track alice-track: a opus frame did not decode" in caplog.text
    assert {(f.layout.name, f.sample_rate, f.samples) for f in frames} == {("mono", 48000, 960)}
    ours = to_16k(frames)
    assert ours[1] == reference[1]  # every chunk at the same audio time
    same, other = ours[0].astype(float), reference[0].astype(float)
    assert same.size == other.size
    snr_db = 10 * np.log10(np.sum(other**2) / np.sum((same - other) ** 2))
    assert snr_db > 60, snr_db


def test_receivers_of_another_shape_keep_aiortcs_thread(caplog: pytest.LogCaptureFixture) -> None:
    class Receiver:
        started = False
        track = None

    class Transceiver:
        kind = "audio"
        receiver = Receiver()

    class Peer:
        def getTransceivers(self) -> list[Transceiver]:
            return [Transceiver()]

    with caplog.at_level(logging.WARNING, "sfu_bridge.receive_decode"):
        assert decode_on_loop(Peer()) == 0
    assert "this aiortc's receivers have another shape: audio decodes in threads" in caplog.text


def decoder_threads() -> int:
    return sum(t.name == "audio-decoder" for t in threading.enumerate())


@pytest.mark.parametrize("on_loop", [True, False], ids=["on-loop", "aiortc-thread"])
async def test_a_real_peers_speech_is_captioned_either_way(tmp_path: Path, on_loop: bool) -> None:
    librivox_files()
    threads_before = decoder_threads()
    settings = bridge_settings(tmp_path, decode_on_loop=on_loop)
    async with running_bridge(settings) as (bridge, client, sink):
        pc = client_peer()
        track = SpeechTrack(utterance(CLIP))
        pc.addTransceiver(track, direction="sendonly")
        created = await client.post(
            "/v1/sessions",
            json={"room": "r", "sdp": await offer_for(pc), "tracks": {"0": {"participant": "a"}}},
        )
        assert created.status_code == 200, created.text
        await answer(pc, created.json()["sdp"])
        await track.spoken.wait()
        await wait_until(lambda: bool(finals(sink, "a")), 20, "a's final")
        receivers = [
            t.receiver for peer in bridge.peers.values() for t in peer.pc.getTransceivers()
        ]
        loop_decoders = [
            r._RTCRtpReceiver__decoder_queue  # type: ignore[attr-defined]
            for r in receivers
            if isinstance(r._RTCRtpReceiver__decoder_queue, LoopDecoder)  # type: ignore[attr-defined]
        ]
        assert len(loop_decoders) == (len(receivers) if on_loop else 0) and receivers
        if on_loop:
            sent = track.sent // 320
            assert 0.9 * sent <= loop_decoders[0].frames <= sent, (loop_decoders[0].frames, sent)
            assert loop_decoders[0].decode_errors == 0
        assert_captions(
            {"a": librivox_reference()[CLIP]}, {"a": " ".join(f.text for f in finals(sink, "a"))}
        )
        await pc.close()
    assert decoder_threads() == threads_before  # every receiver's thread ended with it
