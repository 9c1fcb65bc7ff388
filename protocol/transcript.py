"""The finished transcript: what post-call and batch jobs produce and exports render."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from protocol.frames import Word


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Speaker(_Model):
    id: str
    name: str | None = None


class Segment(_Model):
    id: str = Field(description="kept equal to the live segment_id where the segment covers one")
    speaker: str = Field(description="Speaker.id")
    start: float = Field(ge=0.0)
    end: float = Field(ge=0.0)
    text: str
    words: list[Word] = Field(default_factory=list)
    live_segment_ids: list[str] = Field(default_factory=list)


class Cited(_Model):
    """A summary item tied to the transcript by timecodes that exist in it."""

    text: str
    start: float
    end: float
    segment_ids: list[str] = Field(default_factory=list)


class ActionItem(Cited):
    owner: str | None = None
    due: str | None = None


class Summary(_Model):
    summary: list[Cited] = Field(default_factory=list)
    topics: list[Cited] = Field(default_factory=list)
    action_items: list[ActionItem] = Field(default_factory=list)
    decisions: list[Cited] = Field(default_factory=list)
    generator: Literal["embedded", "llm"] = "embedded"
    fallback_reason: str | None = Field(default=None, description="why the LLM was not used")


class SpeechSpan(_Model):
    speaker: str | None = None
    start: float
    end: float


class Transcript(_Model):
    id: str
    language: str | None = None
    model: str
    duration: float = Field(ge=0.0)
    speakers: list[Speaker] = Field(default_factory=list)
    segments: list[Segment] = Field(default_factory=list)
    summary: Summary | None = None
    redacted: list[str] = Field(default_factory=list, description="PII kinds masked")
    unrecognized_speech: list[SpeechSpan] = Field(
        default_factory=list,
        description="stretches voice detection marks as speech where the model heard no "
        "words, even decoded again on their own",
    )
    partial: bool = Field(
        default=False, description="the audio was truncated (allow_truncated): part is missing"
    )
    declared_duration: float | None = Field(
        default=None, description="what the truncated file's header declared, seconds"
    )

    def speaker_name(self, speaker_id: str) -> str:
        for speaker in self.speakers:
            if speaker.id == speaker_id:
                return speaker.name or speaker.id
        return speaker_id


class Passage(_Model):
    segment_id: str
    speaker: str = Field(description="the speaker's display name")
    start: float
    end: float
    text: str
    score: float = Field(description="cosine similarity to the question")


class Answer(_Model):
    question: str
    answer: str
    passages: list[Passage] = Field(default_factory=list)
    generator: Literal["embedded", "llm"] = "embedded"
    fallback_reason: str | None = Field(default=None, description="why the LLM was not used")
