"""What every call in the process shares: settings, the live engine, the decode scheduler,
the frame sink, admission and the hand-over of ended calls to post-call."""

from pathlib import Path
from typing import TYPE_CHECKING

from config import Settings
from engines.base import Engine
from engines.factory import decode_threads, load_engine
from engines.scheduler import DecodeScheduler
from pipeline.sink import FrameSink
from protocol import Subjects

if TYPE_CHECKING:
    from pipeline.call.admission import Admission
    from pipeline.handover import CallHandover


class LiveRuntime:
    def __init__(
        self, settings: Settings, engine: Engine, scheduler: DecodeScheduler, sink: FrameSink
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.scheduler = scheduler
        self.sink = sink
        self.subjects = Subjects(settings.nats.subject_prefix)
        self.handover: CallHandover | None = None
        self.admission: Admission | None = None
        self.open_calls: set[str] = set()

    @classmethod
    async def create(
        cls, settings: Settings, sink: FrameSink, engine: Engine | None = None
    ) -> "LiveRuntime":
        scheduler = DecodeScheduler(decode_threads(settings), max_load=settings.live.max_load)
        await scheduler.start()
        return cls(settings, engine or load_engine(settings.live.model, settings), scheduler, sink)

    @property
    def calls_dir(self) -> Path:
        return self.settings.calls_dir

    async def aclose(self) -> None:
        await self.scheduler.stop()
