"""One call in one room, from its first participant to its hand-over to post-call.

The one owner of a call's life for every way in (WebRTC, Janus, ``/v1/listen``, files):

* state ``open`` -> ``ending`` -> ``ended`` (:class:`CallState`; any other move raises);
* participants: each admitted against the runtime's :class:`~pipeline.call.Admission` (its
  lease is held until it leaves), given a speaker stream and a recorded track; the same id
  again replaces the old stream (reason ``replaced``);
* limits (:class:`CallLimits`): no audio for ``idle_timeout_s`` or ``max_duration_s`` of wall
  clock end the call with reason ``idle`` / ``max_duration``. ``start(watch=True)`` enforces
  them with a timer; a transport that waits on its own socket asks :meth:`time_left` and
  :meth:`expired` instead (the rules stay here);
* end, once: every stream flushed, the recording closed, ``call.ended``, the hand-over
  (``runtime.handover``: recording into the object store, the one post-call job), then each
  ``on_ended`` callback (a transport closing its peers).
"""

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from engines.base import Engine
from pipeline.call.admission import Lease, StreamKind
from pipeline.jobs import new_job_id
from pipeline.recorder import CallRecord, CallRecorder
from pipeline.runtime import LiveRuntime
from pipeline.sink import FanOutSink, FrameSink
from pipeline.speaker_stream import Participant, SpeakerStream
from pipeline.tasks import TaskSet
from protocol import ErrorCode, ErrorFrame, EventFrame, EventType

log = logging.getLogger(__name__)


class CallState(StrEnum):
    OPEN = "open"
    ENDING = "ending"
    ENDED = "ended"


_NEXT: dict[CallState, frozenset[CallState]] = {
    CallState.OPEN: frozenset({CallState.ENDING}),
    CallState.ENDING: frozenset({CallState.ENDED}),
    CallState.ENDED: frozenset(),
}


class EndReason(StrEnum):
    """Why a call (or a participant's stream) ended; transports add their own words."""

    ENDED = "ended"
    LEFT = "left"
    IDLE = "idle"
    MAX_DURATION = "max_duration"
    REPLACED = "replaced"
    SHUTDOWN = "shutdown"
    INTERRUPTED = "interrupted"
    BOT_LOST = "bot_lost"  # its bot died; another ended it at its last checkpoint


class IllegalCallTransition(RuntimeError):
    def __init__(self, call_id: str, current: CallState, target: CallState) -> None:
        super().__init__(f"call {call_id}: illegal transition {current} -> {target}")


class CallEndedError(RuntimeError):
    def __init__(self, call_id: str) -> None:
        super().__init__(f"call {call_id} has ended")


@dataclass(frozen=True)
class CallLimits:
    idle_timeout_s: float
    max_duration_s: float | None = None


OnEnded = Callable[["CallSession", str], Awaitable[None]]


class CallSession:
    def __init__(
        self,
        runtime: LiveRuntime,
        room: str,
        limits: CallLimits | None = None,
        call_id: str | None = None,
    ) -> None:
        self.runtime = runtime
        self.room = room
        self.limits = limits or CallLimits(runtime.settings.limits.idle_timeout_s)
        self.call_id = call_id or uuid.uuid4().hex
        self.job_id = new_job_id()
        self.participants: dict[str, SpeakerStream] = {}
        self.state = CallState.OPEN
        self.on_ended: list[OnEnded] = []
        self._started = time.monotonic()
        self._last_audio = self._started
        self._recorder = CallRecorder(runtime.calls_dir, self.call_id, room, self.job_id)
        runtime.open_calls.add(self.call_id)
        self._record: CallRecord | None = None
        self._leases: dict[str, Lease] = {}
        self._ending = asyncio.Lock()
        self._tasks = TaskSet(f"call {room}")

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    @property
    def handed_over(self) -> bool:
        return self._record is not None and self._record.handed_over

    def _move(self, target: CallState) -> None:
        if target not in _NEXT[self.state]:
            raise IllegalCallTransition(self.call_id, self.state, target)
        self.state = target

    async def start(self, watch: bool = False) -> None:
        """Announce the call; ``watch``: end it by itself when a limit is reached."""
        self._event(EventType.CALL_STARTED)
        if watch:
            self._tasks.spawn(self._watch(), "limits")

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

    async def admit(
        self,
        participant: str,
        name: str | None = None,
        language: str | None = None,
        kind: StreamKind = StreamKind.WEBRTC,
        offset: float | None = None,
        frames: FrameSink | None = None,
        engine: Engine | None = None,
    ) -> SpeakerStream:
        """A stream for the participant, under the live-stream limit; ``frames`` also gets
        the stream's frames (a transport answering the participant itself). ``engine``: the
        live engine already picked for ``language`` (default: the one that recognizes it,
        see :meth:`LiveRuntime.engine_for`).

        Raises :class:`CapacityError` (after an error frame for the participant) when no
        stream can start, :class:`CallEndedError` once the call ends,
        :class:`engines.models.UnsupportedLanguageError` or
        :class:`engines.base.ModelNotFoundError` when no live model serves ``language``."""
        if self.state is not CallState.OPEN:
            raise CallEndedError(self.call_id)
        if engine is None:
            engine, language = await self.runtime.engine_for(language)
        if participant in self.participants:
            await self.remove_participant(participant, EndReason.REPLACED)
        gate = self.runtime.admission
        if gate is not None:
            lease = gate.try_acquire(kind)
            if lease is None:
                error = gate.capacity_error()
                self.runtime.sink.emit(
                    ErrorFrame(
                        code=ErrorCode.CAPACITY,
                        message=f"{error.message}; this participant is not captioned",
                        room=self.room,
                        participant=participant,
                    )
                )
                raise error
            self._leases[participant] = lease
        return self.add_participant(participant, name, language, offset, frames, engine=engine)

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
        frames: FrameSink | None = None,
        *,
        engine: Engine | None = None,
    ) -> SpeakerStream:
        """A new speaker stream, outside admission (files, tests), whose first sample is at
        call time ``offset`` (default: now), on ``engine`` (default: the runtime's live
        engine)."""
        if self.state is not CallState.OPEN:
            raise CallEndedError(self.call_id)
        if participant in self.participants:
            raise ValueError(
                f"participant {participant!r} already has a stream in call {self.call_id}"
            )
        start = self.elapsed if offset is None else offset
        stream = SpeakerStream(
            Participant(self.room, participant, name, language),
            engine or self.runtime.engine,
            self.runtime.recognition,
            self.runtime.sink if frames is None else FanOutSink(self.runtime.sink, frames),
            offset=start,
            recorder=self._recorder.track(participant, name, language, start),
            on_final=self._recorder.final,
            max_backlog_s=self.runtime.settings.live.input_queue_s,
        )
        self.participants[participant] = stream
        self._event(EventType.PARTICIPANT_JOINED, participant, name)
        return stream

    def rename(self, participant: str, name: str) -> None:
        if participant in self.participants:
            self.participants[participant].name = name
            self._recorder.rename(participant, name)

    async def remove_participant(self, participant: str, reason: str = EndReason.LEFT) -> None:
        stream = self.participants.pop(participant, None)
        if stream is None:
            return
        try:
            await stream.close()
        finally:
            self._release(participant)
        self._event(EventType.PARTICIPANT_LEFT, participant, stream.name, reason)

    def _release(self, participant: str) -> None:
        lease = self._leases.pop(participant, None)
        if lease is not None and self.runtime.admission is not None:
            self.runtime.admission.release(lease)

    def heard(self) -> None:
        """Some participant delivered audio (the idle timer starts again)."""
        self._last_audio = time.monotonic()

    def time_left(self) -> float:
        """Seconds until a limit is reached (0: reached)."""
        deadline = self._last_audio + self.limits.idle_timeout_s
        if self.limits.max_duration_s is not None:
            deadline = min(deadline, self._started + self.limits.max_duration_s)
        return max(deadline - time.monotonic(), 0.0)

    def expired(self) -> EndReason | None:
        """The limit reached now, if any (the wall-clock maximum wins a tie)."""
        now = time.monotonic()
        limit = self.limits.max_duration_s
        if limit is not None and now >= self._started + limit:
            return EndReason.MAX_DURATION
        if now >= self._last_audio + self.limits.idle_timeout_s:
            return EndReason.IDLE
        return None

    async def _watch(self) -> None:
        while self.state is CallState.OPEN:
            reason = self.expired()
            if reason is not None:
                log.info("call %s in %s: %s, ending", self.call_id, self.room, reason)
                await self.end(reason)
                return
            await asyncio.sleep(max(self.time_left(), 0.05))

    async def end(self, reason: str = EndReason.ENDED) -> CallRecord:
        """End the call once (flushing every stream); later calls return the same record."""
        async with self._ending:
            if self._record is not None:
                return self._record
            self._move(CallState.ENDING)
            streams = list(self.participants)
            try:
                await asyncio.gather(*(self.remove_participant(p, reason) for p in streams))
            finally:
                for participant in list(self._leases):
                    self._release(participant)
            record = self._recorder.close(reason)
            self._record = record
            self.runtime.open_calls.discard(self.call_id)
            self._move(CallState.ENDED)
            self._event(EventType.CALL_ENDED, reason=reason)
            handover = self.runtime.handover
            if handover is not None:
                try:
                    await handover.hand_over(record)
                except Exception:
                    log.exception("call %s not handed over; the next start retries", self.call_id)
        await self._tasks.aclose()
        for callback in self.on_ended:
            try:
                await callback(self, reason)
            except Exception:
                log.exception("on-ended callback failed for call %s", self.call_id)
        return record
