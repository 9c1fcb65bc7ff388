"""Received audio decoded on the event loop, Opus to mono.

aiortc decodes each receiver's frames in a thread of its own: every 20 ms frame is a
``queue.Queue`` hand-off to that thread, a GIL switch, a stereo decode and a
``run_coroutine_threadsafe`` back to the loop. With tens of tracks those hand-offs cost more
than the decode (BENCHMARKS.md, "Where the media process's time goes"). Decoding where the
frame is reassembled, straight into the track's queue, drops all of them; decoding Opus to
mono (the pipeline keeps one channel anyway) costs a third less than to stereo. FFmpeg's
libopus decoder always outputs 48 kHz, so the resampler still makes 16 kHz.

aiortc offers no option for it: :func:`decode_on_loop` swaps the queue a receiver hands its
frames to, before the receiver starts. Where that private shape is not there (another aiortc
version), the receiver keeps aiortc's own decoder thread.
"""

import asyncio
import logging
import threading
from fractions import Fraction
from typing import Any

import av
from aiortc.codecs import get_decoder
from aiortc.codecs.base import Decoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av.codec import CodecContext
from av.frame import Frame

log = logging.getLogger(__name__)

OPUS_TIME_BASE = Fraction(1, 48000)  # RTP clock of Opus (RFC 7587), whatever the content

_QUEUE = "_RTCRtpReceiver__decoder_queue"
_STARTED = "_RTCRtpReceiver__started"


class MonoOpusDecoder(Decoder):
    def __init__(self) -> None:
        self.codec = CodecContext.create("libopus", "r")
        self.codec.format = "s16"
        self.codec.layout = "mono"
        self.codec.sample_rate = 48000

    def decode(self, encoded_frame: JitterFrame) -> list[Frame]:
        packet = av.Packet(encoded_frame.data)
        packet.pts = encoded_frame.timestamp
        packet.time_base = OPUS_TIME_BASE
        return list(self.codec.decode(packet))


class LoopDecoder:
    """Stands in for a receiver's decoder queue: :meth:`put` comes from the receiver on the
    event loop with each reassembled frame and decodes it into ``output`` at once.

    aiortc's decoder thread still starts and blocks in :meth:`get` until the receiver stops;
    then it ends the track as it always does.
    """

    def __init__(self, output: asyncio.Queue[Frame | None], label: str) -> None:
        self.output = output
        self.label = label
        self.frames = 0
        self.decode_errors = 0
        self._decoder: Decoder | None = None
        self._codec_name: str | None = None
        self._stopped = threading.Event()

    def put(self, task: tuple[RTCRtpCodecParameters, JitterFrame] | None) -> None:
        if task is None:
            self._stopped.set()
            return
        codec, encoded_frame = task
        if self._decoder is None or codec.name != self._codec_name:
            self._decoder = decoder_for(codec)
            self._codec_name = codec.name
        try:
            frames = self._decoder.decode(encoded_frame)
        except av.FFmpegError as exc:
            # the decoder keeps its state: a reset would garble the frames after it
            self.decode_errors += 1
            log.warning("track %s: a %s frame did not decode: %s", self.label, codec.name, exc)
            return
        self.frames += len(frames)
        for frame in frames:
            self.output.put_nowait(frame)

    def get(self) -> None:
        self._stopped.wait()


def decoder_for(codec: RTCRtpCodecParameters) -> Decoder:
    if codec.mimeType.lower() == "audio/opus":
        return MonoOpusDecoder()
    return get_decoder(codec)


def decode_on_loop(pc: Any) -> int:
    """Gives every audio receiver of ``pc`` that has not started yet a :class:`LoopDecoder`;
    returns how many it changed (call it after each ``setRemoteDescription``)."""
    changed = 0
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        if transceiver.kind != "audio":
            continue
        track_queue = getattr(receiver.track, "_queue", None)
        shaped = hasattr(receiver, _QUEUE) and hasattr(receiver, _STARTED)
        if not shaped or not isinstance(track_queue, asyncio.Queue):
            log.warning("this aiortc's receivers have another shape: audio decodes in threads")
            return changed
        if getattr(receiver, _STARTED):
            continue
        if not isinstance(getattr(receiver, _QUEUE), LoopDecoder):
            setattr(receiver, _QUEUE, LoopDecoder(track_queue, receiver.track.id))
            changed += 1
    return changed
