"""The bridge's side of one room's call: started by the first track, ended when idle or told."""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from engines.base import ModelNotFoundError
from engines.models import UnsupportedLanguageError
from pipeline.call import CallSession
from pipeline.recorder import CallRecord
from pipeline.runtime import LiveRuntime
from pipeline.speaker_stream import SpeakerStream
from protocol import ErrorCode, ErrorFrame
from sfu_bridge.tasks import TaskSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Speaker:
    """Who is behind a track."""

    participant: str
    name: str | None = None
    language: str | None = None


class CallState(StrEnum):
    WAITING = "waiting"
    ACTIVE = "active"
    ENDED = "ended"


class IllegalTransition(RuntimeError):
    pass


class ParticipantTarget:
    """One participant's speaker stream as a track feed's target."""

    def __init__(self, room: "CallRoom", speaker: Speaker, stream: SpeakerStream) -> None:
        self.room = room
        self.speaker = speaker
        self.stream = stream

    def push(self, pcm: np.ndarray, at: float) -> None:
        self.stream.push(pcm, at=at)

    async def close(self, reason: str) -> None:
        await self.room.remove(self, reason)


class CallRoom:
    """Holds the :class:`CallSession` of one room from its first track to its end.

    The call ends with :meth:`end`, or by itself (reason ``idle``) once no track has delivered
    audio for ``idle_timeout_s``; ``on_ended`` then lets the owner close the room's peers.
    """

    def __init__(
        self,
        runtime: LiveRuntime,
        room: str,
        idle_timeout_s: float,
        on_ended: Callable[["CallRoom", str], Awaitable[None]] | None = None,
    ) -> None:
        self.runtime = runtime
        self.room = room
        self.idle_timeout_s = idle_timeout_s
        self.on_ended = on_ended
        self.state = CallState.WAITING
        self.call: CallSession | None = None
        self.record: CallRecord | None = None
        self.end_reason: str | None = None
        self._lock = asyncio.Lock()
        self._last_audio = 0.0
        self._tasks = TaskSet(f"call {room}")
        self._leases: dict[str, Any] = {}

    def _move(self, to: CallState) -> None:
        allowed = {
            CallState.WAITING: {CallState.ACTIVE, CallState.ENDED},
            CallState.ACTIVE: {CallState.ENDED},
            CallState.ENDED: set(),
        }
        if to not in allowed[self.state]:
            raise IllegalTransition(f"call in {self.room}: {self.state} -> {to}")
        self.state = to

    async def open(self, speaker: Speaker) -> ParticipantTarget | None:
        """A target for the speaker's audio, starting the call if needed; ``None`` once ended."""
        async with self._lock:
            if self.state is CallState.ENDED:
                return None
            if self.call is None:
                call = CallSession(self.runtime, self.room)
                await call.start()
                self.call = call
                self._move(CallState.ACTIVE)
                self.heard()
                self._tasks.spawn(self._watch_idle(), "idle watchdog")
            call = self.call
            if speaker.participant in call.participants:
                await call.remove_participant(speaker.participant, reason="replaced")
                self._release(speaker.participant)
            gate = self.runtime.admission
            if gate is not None:
                lease = gate.try_acquire("webrtc")
                if lease is None:
                    self.runtime.sink.emit(
                        ErrorFrame(
                            code=ErrorCode.CAPACITY,
                            message="the live stream limit is reached; this track is not captioned",
                            room=self.room,
                            participant=speaker.participant,
                        )
                    )
                    return None
                self._leases[speaker.participant] = lease
            try:
                stream = await call.join(speaker.participant, speaker.name, speaker.language)
            except (UnsupportedLanguageError, ModelNotFoundError) as exc:
                self._release(speaker.participant)
                self.runtime.sink.emit(
                    ErrorFrame(
                        code=ErrorCode(exc.code),
                        message=f"this track is not captioned: {exc}",
                        room=self.room,
                        participant=speaker.participant,
                    )
                )
                return None
            return ParticipantTarget(self, speaker, stream)

    def _release(self, participant: str) -> None:
        lease = self._leases.pop(participant, None)
        if lease is not None and self.runtime.admission is not None:
            self.runtime.admission.release(lease)

    async def remove(self, target: ParticipantTarget, reason: str) -> None:
        call = self.call
        if self.state is not CallState.ACTIVE or call is None:
            return
        if call.participants.get(target.speaker.participant) is target.stream:
            await call.remove_participant(target.speaker.participant, reason=reason)
            self._release(target.speaker.participant)

    def rename(self, participant: str, name: str) -> None:
        if (
            self.state is CallState.ACTIVE
            and self.call is not None
            and participant in self.call.participants
        ):
            self.call.rename(participant, name)

    def heard(self) -> None:
        self._last_audio = asyncio.get_running_loop().time()

    async def _watch_idle(self) -> None:
        loop = asyncio.get_running_loop()
        while self.state is CallState.ACTIVE:
            left = self._last_audio + self.idle_timeout_s - loop.time()
            if left <= 0:
                log.info("call in %s idle for %.1f s: ending", self.room, self.idle_timeout_s)
                await self.end("idle")
                return
            await asyncio.sleep(left)

    async def end(self, reason: str = "ended") -> CallRecord | None:
        """Ends the call (flushing every stream) once; later calls return the same record."""
        async with self._lock:
            if self.state is CallState.ENDED:
                return self.record
            self._move(CallState.ENDED)
            self.end_reason = reason
            if self.call is not None:
                self.record = await self.call.end(reason)
            for participant in list(self._leases):
                self._release(participant)
        await self._tasks.aclose()
        if self.on_ended is not None:
            await self.on_ended(self, reason)
        return self.record
