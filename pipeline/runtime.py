"""What every call in the process shares: settings, the live engine, where live streams are
decoded (a scheduler here or the recognition process), the frame sink, admission and the
hand-over of ended calls to post-call."""

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from config import Settings
from engines.base import Engine
from engines.factory import live_scheduler, load_engine, pick_live_model
from engines.models import check_language
from engines.recognize import Recognition
from pipeline.recognizer_process import RecognizerProcess
from pipeline.sink import FrameSink
from protocol import Subjects

if TYPE_CHECKING:
    from pipeline.call.admission import Admission
    from pipeline.handover import CallHandover


class LiveRuntime:
    def __init__(
        self, settings: Settings, engine: Engine, recognition: Recognition, sink: FrameSink
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.recognition = recognition
        self.sink = sink
        self.subjects = Subjects(settings.nats.subject_prefix)
        self.handover: CallHandover | None = None
        self.admission: Admission | None = None
        self.open_calls: set[str] = set()
        self._engines: dict[str, Engine] = {engine.info.name: engine}
        self._loading = asyncio.Lock()

    async def engine_for(self, language: str | None) -> tuple[Engine, str | None]:
        """The live engine for a stream in ``language`` (None: ``live.language``) and the
        language to give its stream (None: detect). Streams the live model cannot serve
        get ``live.multilingual_model``, loaded on first use in a thread. Raises
        :class:`engines.models.UnsupportedLanguageError` when neither recognizes it."""
        name, stream_language = pick_live_model(self.settings, self.engine, language)
        if name not in self._engines:
            async with self._loading:
                if name not in self._engines:
                    self._engines[name] = await self._load(name)
        engine = self._engines[name]
        check_language(name, stream_language, engine.info.languages)
        return engine, stream_language

    async def _load(self, name: str) -> Engine:
        if isinstance(self.recognition, RecognizerProcess):
            return await self.recognition.load(name, multilingual=True)
        return await asyncio.to_thread(load_engine, name, self.settings, multilingual=True)

    @classmethod
    async def create(
        cls, settings: Settings, sink: FrameSink, engine: Engine | None = None
    ) -> "LiveRuntime":
        """``engine``: a live engine already loaded here, decoded in this process; else
        ``live.model``, in the recognition process when ``live.recognizer_process``."""
        if engine is None and settings.live.recognizer_process:
            process = RecognizerProcess(settings, nice=settings.live.recognizer_nice)
            await process.start()
            try:
                return cls(settings, await process.load(settings.live.model), process, sink)
            except BaseException:
                await process.stop()
                raise
        scheduler = live_scheduler(settings)
        await scheduler.start()
        return cls(settings, engine or load_engine(settings.live.model, settings), scheduler, sink)

    @property
    def calls_dir(self) -> Path:
        return self.settings.calls_dir

    async def aclose(self) -> None:
        await self.recognition.stop()
