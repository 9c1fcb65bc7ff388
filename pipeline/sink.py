"""Where frames go. A sink never blocks its caller: it queues (bounded) and reports drops."""

from typing import Protocol

from protocol import CaptionFrame, ErrorFrame, EventFrame

AnyFrame = CaptionFrame | EventFrame | ErrorFrame


class FrameSink(Protocol):
    def emit(self, frame: AnyFrame) -> None:
        """Hand one frame over; must return at once."""


class CollectingSink:
    """Keeps frames in memory (tests, the CLI's stdout printer wraps one)."""

    def __init__(self) -> None:
        self.frames: list[AnyFrame] = []

    def emit(self, frame: AnyFrame) -> None:
        self.frames.append(frame)


class FanOutSink:
    def __init__(self, *sinks: FrameSink) -> None:
        self.sinks = list(sinks)

    def emit(self, frame: AnyFrame) -> None:
        for sink in self.sinks:
            sink.emit(frame)
