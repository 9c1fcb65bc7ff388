"""One call in one room: its participants' speaker streams, recording and life events."""

import asyncio
import logging
import time
import uuid
from enum import StrEnum

from engines.base import Engine
from pipeline.recorder import CallRecord, CallRecorder
from pipeline.runtime import LiveRuntime
from pipeline.speaker_stream import Participant, SpeakerStream
from protocol import EventFrame, EventType

log = logging.getLogger(__name__)


class CallState(StrEnum):
    OPEN = "open"
    ENDING = "ending"
    ENDED = "ended"


class CallEndedError(RuntimeError):
    def __init__(self, call_id: str) -> None:
        super().__init__(f"call {call_id} has ended")


class CallSession:
    def __init__(self, runtime: LiveRuntime, room: str, call_id: str | None = None) -> None:
        self.runtime = runtime
        self.room = room
        self.call_id = call_id or uuid.uuid4().hex
        self.participants: dict[str, SpeakerStream] = {}
        self.state = CallState.OPEN
        self._started = time.monotonic()
        self._recorder = CallRecorder(runtime.calls_dir, self.call_id, room)
        self._record: CallRecord | None = None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    async def start(self) -> None:
        self._event(EventType.CALL_STARTED)

    def _event(
        self,
        event: EventType,
        participant: str | None = None,
        name: str | None = None,
        reason: str | None = None,
    ) -> None:
        self.runtime.sink.emit(
            EventFrame(
                event=event,
                room=self.room,
                call_id=self.call_id,
                participant=participant,
                name=name,
                at=time.time(),
                audio_time=round(self.elapsed, 3),
                reason=reason,
            )
        )

    async def join(
        self,
        participant: str,
        name: str | None = None,
        language: str | None = None,
        offset: float | None = None,
    ) -> SpeakerStream:
        """:meth:`add_participant` on the live engine that recognizes ``language`` (None: the
        configured live language, "auto": detected); raises
        :class:`engines.models.UnsupportedLanguageError` when no live model does."""
        engine, language = await self.runtime.engine_for(language)
        return self.add_participant(participant, name, language, offset, engine=engine)

    def add_participant(
        self,
        participant: str,
        name: str | None = None,
        language: str | None = None,
        offset: float | None = None,
        *,
        engine: Engine | None = None,
    ) -> SpeakerStream:
        """A new speaker stream whose first sample is at call time ``offset`` (default: now),
        on ``engine`` (default: the runtime's live engine)."""
        if self.state != CallState.OPEN:
            raise CallEndedError(self.call_id)
        if participant in self.participants:
            raise ValueError(
                f"participant {participant!r} already has a stream in call {self.call_id}"
            )
        start = self.elapsed if offset is None else offset
        stream = SpeakerStream(
            Participant(self.room, participant, name, language),
            engine or self.runtime.engine,
            self.runtime.scheduler,
            self.runtime.sink,
            offset=start,
            recorder=self._recorder.track(participant, name, language, start),
            on_final=self._recorder.final,
            max_backlog_s=self.runtime.settings.live.input_queue_s,
        )
        self.participants[participant] = stream
        self._event(EventType.PARTICIPANT_JOINED, participant, name)
        return stream

    def rename(self, participant: str, name: str) -> None:
        self.participants[participant].name = name
        self._recorder.rename(participant, name)

    async def remove_participant(self, participant: str, reason: str = "left") -> None:
        stream = self.participants.pop(participant, None)
        if stream is None:
            return
        await stream.close()
        self._event(EventType.PARTICIPANT_LEFT, participant, stream.name, reason)

    async def end(self, reason: str = "ended") -> CallRecord:
        if self._record is not None:
            return self._record
        self.state = CallState.ENDING
        streams = list(self.participants)
        await asyncio.gather(*(self.remove_participant(p, reason) for p in streams))
        record = self._recorder.close(reason)
        self._record = record
        self.state = CallState.ENDED
        self._event(EventType.CALL_ENDED, reason=reason)
        for hook in self.runtime.call_ended_hooks:
            try:
                await hook(record)
            except Exception:
                log.exception("call-ended hook failed for call %s", self.call_id)
        return record
