"""`roomscribe live`: audio files played into one call as if each were a participant's track."""

import asyncio
import re
import sys
import time
from pathlib import Path
from typing import TextIO

import numpy as np

from config import Settings
from pipeline.audio_io import decode_file
from pipeline.call import CallSession
from pipeline.runtime import LiveRuntime
from pipeline.sink import AnyFrame, FanOutSink, FrameSink
from pipeline.speaker_stream import SpeakerStream

CHUNK_S = 0.02


class JsonLinesSink:
    """Prints every frame as one JSON line."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream

    def emit(self, frame: AnyFrame) -> None:
        self.stream.write(frame.model_dump_json() + "\n")
        self.stream.flush()


def participant_ids(files: list[Path], names: list[str]) -> list[tuple[str, str | None]]:
    ids: list[tuple[str, str | None]] = []
    taken: set[str] = set()
    for index, path in enumerate(files):
        name = names[index].strip() if index < len(names) and names[index].strip() else None
        base = re.sub(r"[^\w-]+", "-", (name or path.stem).lower()).strip("-") or f"p{index + 1}"
        ident, count = base, 1
        while ident in taken:
            count += 1
            ident = f"{base}-{count}"
        taken.add(ident)
        ids.append((ident, name))
    return ids


async def play(stream: SpeakerStream, samples: np.ndarray, realtime: bool, clock: float) -> None:
    """Real time: one chunk every ``CHUNK_S``. Faster: the next chunk as soon as recognition
    has caught up, so the decodes (and the finals) are the ones a real-time feed gets."""
    step = int(CHUNK_S * 16000)
    for index, begin in enumerate(range(0, samples.size, step)):
        stream.push(samples[begin : begin + step])
        if realtime:
            await asyncio.sleep(max(0.0, clock + (index + 1) * CHUNK_S - time.monotonic()))
        else:
            await asyncio.sleep(0)
            await stream.caught_up()


async def run_live_files(
    settings: Settings,
    files: list[Path],
    names: list[str],
    room: str,
    speed: str,
    publish: bool,
    sink: FrameSink | None = None,
) -> None:
    tracks = [decode_file(path) for path in files]
    realtime = speed == "1"
    if not realtime:
        # the feed waits for recognition, and a fixed cadence keeps its decodes (and finals)
        # the ones a real-time feed gets
        live = settings.live.model_copy(update={"input_queue_s": float("inf"), "max_load": 1.0})
        settings = settings.model_copy(update={"live": live})
    sinks: list[FrameSink] = [sink or JsonLinesSink()]
    publisher = None
    if publish:
        from pipeline.publisher import NatsPublisher
        from protocol import Subjects

        assert settings.nats.url
        publisher = NatsPublisher(
            settings.nats.url, Subjects(settings.nats.subject_prefix), settings.nats.outbox_limit
        )
        await publisher.start()
        sinks.append(publisher)
    runtime = await LiveRuntime.create(settings, FanOutSink(*sinks))
    try:
        call = CallSession(runtime, room)
        await call.start()
        streams = [
            call.add_participant(ident, name, offset=0.0)
            for ident, name in participant_ids(files, names)
        ]
        clock = time.monotonic()
        await asyncio.gather(
            *(
                play(stream, samples, realtime, clock)
                for stream, samples in zip(streams, tracks, strict=True)
            )
        )
        await call.end("completed")
    finally:
        await runtime.aclose()
        if publisher is not None:
            await publisher.close()
