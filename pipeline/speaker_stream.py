"""One participant's audio in, that participant's caption frames out."""

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engines.base import SAMPLE_RATE, Engine, EngineError, Hypothesis, InvalidAudioError, as_float32
from engines.recognize import Recognition
from pipeline.recorder import TrackRecorder
from pipeline.sink import FrameSink
from pipeline.tasks import TaskSet
from protocol import CaptionFrame, ErrorCode, ErrorFrame, Word

log = logging.getLogger(__name__)

_TOLERANCE = SAMPLE_RATE // 100  # 10 ms of timestamp jitter is not a hole


@dataclass(frozen=True)
class Participant:
    room: str
    participant: str
    name: str | None = None
    language: str | None = None


class SpeakerStream:
    """PCM in -> caption frames out for one participant.

    ``offset`` is the call time of this stream's first sample, so frame times are seconds
    since the call started. Audio is recorded before recognition; when decoding falls more
    than ``max_backlog_s`` behind, new audio skips recognition (it is still recorded, so the
    post-call pass has it) and an ``STREAM_OVERLOADED`` error frame says so once per burst.
    """

    def __init__(
        self,
        who: Participant,
        engine: Engine,
        recognition: Recognition,
        sink: FrameSink,
        *,
        offset: float = 0.0,
        recorder: TrackRecorder | None = None,
        on_final: Callable[[CaptionFrame], None] | None = None,
        max_backlog_s: float = 30.0,
    ) -> None:
        self.who = who
        self.name = who.name
        self.offset = offset
        self.engine = engine
        self._sink = sink
        self._recorder = recorder
        self._on_final = on_final
        self._max_backlog = max_backlog_s
        self._recognizer = recognition.open(engine, who.language)
        self._id = uuid.uuid4().hex[:10]
        self._received = 0
        self._seq = 0
        self._revisions: dict[int, int] = {}
        self._overloaded = False
        self.skipped_seconds = 0.0
        self.frames_emitted = 0
        self._closed = False
        self._tasks = TaskSet(f"speaker {who.room}/{who.participant}")
        self._task = self._tasks.spawn(self._consume(), "consume")

    @property
    def audio_seconds(self) -> float:
        return self._received / SAMPLE_RATE

    async def caught_up(self) -> None:
        """Wait until recognition has decoded everything pushed so far (for feeds faster
        than real time)."""
        await self._recognizer.wait_idle()

    def push(
        self,
        pcm: bytes | np.ndarray,
        sample_rate: int = SAMPLE_RATE,
        channels: int = 1,
        at: float | None = None,
    ) -> None:
        """Add audio: s16le bytes, int16 or float32 samples, 16 kHz mono.

        ``at`` is the stream time in seconds of the first sample; a hole before it is filled
        with silence so audio time stays true, and audio that overlaps what came before is
        dropped.
        """
        if self._closed:
            raise InvalidAudioError(f"participant {self.who.participant!r}: stream is closed")
        if sample_rate != SAMPLE_RATE:
            raise InvalidAudioError(
                f"participant {self.who.participant!r}: expected {SAMPLE_RATE} Hz audio, got {sample_rate} Hz"
            )
        if channels != 1:
            raise InvalidAudioError(
                f"participant {self.who.participant!r}: expected mono audio, got {channels} channels"
            )
        samples = as_float32(pcm)
        if at is not None:
            hole = round(at * SAMPLE_RATE) - self._received
            if hole > _TOLERANCE:
                self._accept(np.zeros(hole, np.float32), np.zeros(hole, np.int16))
            elif hole < -_TOLERANCE:
                cut = min(-hole, samples.size)
                samples = samples[cut:]
                if isinstance(pcm, np.ndarray):
                    pcm = pcm[cut:]
        if samples.size:
            original = pcm if isinstance(pcm, np.ndarray) and pcm.dtype == np.int16 else None
            self._accept(samples, original)

    def _accept(self, samples: np.ndarray, original: np.ndarray | None = None) -> None:
        self._received += samples.size
        if self._recorder is not None:
            pcm16 = (
                original
                if original is not None
                else (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)
            )
            self._recorder.write(pcm16)
        if self._recognizer.backlog_seconds > self._max_backlog:
            self.skipped_seconds += samples.size / SAMPLE_RATE
            if not self._overloaded:
                self._overloaded = True
                self._error(
                    ErrorCode.STREAM_OVERLOADED,
                    f"recognition is {self._max_backlog:.0f} s behind; live captions skip audio until it catches up (the recording keeps it)",
                )
            return
        self._overloaded = False
        self._recognizer.push_frame(samples)

    def _error(self, code: str, message: str) -> None:
        self._sink.emit(
            ErrorFrame(
                code=code, message=message, room=self.who.room, participant=self.who.participant
            )
        )

    async def close(self) -> None:
        """End of input: returns once every final has been emitted."""
        if self._closed:
            await self._task
            return
        self._closed = True
        self._recognizer.end_input()
        try:
            await self._task
        finally:
            if self._recorder is not None:
                self._recorder.close()

    async def _consume(self) -> None:
        try:
            async for hypothesis in self._recognizer:
                frame = self._frame(hypothesis)
                self._sink.emit(frame)
                self.frames_emitted += 1
                if frame.type == "final" and self._on_final is not None:
                    self._on_final(frame)
        except EngineError as exc:
            log.error("recognizer of %s failed: %s", self.who.participant, exc)
            self._error(exc.code, str(exc))
        finally:
            await self._recognizer.aclose()

    def _frame(self, hyp: Hypothesis) -> CaptionFrame:
        rev = self._revisions.get(hyp.utterance, -1) + 1
        self._revisions[hyp.utterance] = rev
        if hyp.kind == "final":
            self._revisions.pop(hyp.utterance, None)
        seq = self._seq
        self._seq += 1
        shift = self.offset
        return CaptionFrame(
            type="final" if hyp.kind == "final" else "partial",
            room=self.who.room,
            participant=self.who.participant,
            name=self.name,
            segment_id=f"{self._id}-{hyp.utterance}",
            rev=rev,
            seq=seq,
            start=round(shift + hyp.start, 3),
            end=round(shift + max(hyp.end, hyp.start), 3),
            text=hyp.text,
            words=[
                Word(
                    word=w.word,
                    start=round(shift + w.start, 3),
                    end=round(shift + w.end, 3),
                    confidence=w.confidence,
                )
                for w in hyp.words
            ],
            language=hyp.language,
            model=self.engine.info.name,
            stable_chars=min(hyp.stable_chars, len(hyp.text)),
        )
