"""Questions about a transcript: the segments closest to the question by embedding
similarity, answered by the configured LLM from those passages, or returned as they are.

CPU-bound and blocking: call it from a worker thread, not from a coroutine.
"""

import logging
from functools import lru_cache

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from config.settings import Settings
from engines.base import EngineError
from engines.embeddings import embed
from engines.llm import LLMError, chat_json, llm_configured
from protocol.errors import ErrorCode
from protocol.transcript import Answer, Passage, Transcript

log = logging.getLogger(__name__)

TOP_K = 5
# passages the embedded answer quotes
QUOTED = 3
MAX_QUESTION_CHARS = 2000

ASK_INSTRUCTIONS = """You answer questions about a meeting using only the transcript passages given.
Each passage line is: <segment id> [<start>s-<end>s] <speaker>: <text>
Reply with one JSON object and nothing else: {"answer": str, "segment_ids": [str]}.
In the answer, cite the times of the passages you use, like "(at 62.5s)", and list their
segment ids in segment_ids. If the passages do not contain the answer, say so."""


class AskError(EngineError):
    code: ErrorCode = ErrorCode.INVALID_REQUEST


class _Reply(BaseModel):
    model_config = ConfigDict(extra="ignore")

    answer: str = Field(min_length=1)
    segment_ids: list[str] = Field(default_factory=list)


def _clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}"


@lru_cache(maxsize=16)
def _segment_vectors(texts: tuple[str, ...]) -> np.ndarray:
    # questions come in series about one transcript: embed its segments once
    vectors = embed(list(texts))
    vectors.flags.writeable = False
    return vectors


def retrieve(t: Transcript, question: str, top_k: int = TOP_K) -> list[Passage]:
    """The ``top_k`` segments most similar to ``question``, best first."""
    segments = [s for s in t.segments if s.text.strip()]
    if not segments:
        return []
    scores = _segment_vectors(tuple(s.text for s in segments)) @ embed([question])[0]
    best = sorted(range(len(segments)), key=lambda i: -float(scores[i]))[:top_k]
    return [
        Passage(
            segment_id=segments[i].id,
            speaker=t.speaker_name(segments[i].speaker),
            start=segments[i].start,
            end=segments[i].end,
            text=" ".join(segments[i].text.split()),
            score=round(float(scores[i]), 4),
        )
        for i in best
    ]


def _quote(passages: list[Passage]) -> str:
    return "\n".join(f"[{_clock(p.start)}] {p.speaker}: {p.text}" for p in passages[:QUOTED])


def _llm_answer(question: str, passages: list[Passage], settings: Settings) -> Answer:
    lines = "\n".join(
        f"{p.segment_id} [{p.start:.1f}s-{p.end:.1f}s] {p.speaker}: {p.text}"
        for p in sorted(passages, key=lambda p: p.start)
    )
    reply = chat_json(
        settings,
        [
            {"role": "system", "content": ASK_INSTRUCTIONS},
            {"role": "user", "content": f"Passages:\n{lines}\n\nQuestion: {question}"},
        ],
    )
    try:
        parsed = _Reply.model_validate(reply)
    except ValidationError as exc:
        raise LLMError(f"LLM answer does not match the schema: {exc.errors()[0]['msg']}") from exc
    by_id = {p.segment_id: p for p in passages}
    cited = [by_id[i] for i in dict.fromkeys(parsed.segment_ids) if i in by_id]
    if not cited:
        raise LLMError(f"LLM answer cites none of the passages it was given: {parsed.segment_ids}")
    return Answer(question=question, answer=parsed.answer.strip(), passages=cited, generator="llm")


def ask(
    t: Transcript, question: str, settings: Settings | None = None, top_k: int = TOP_K
) -> Answer:
    """Answer ``question`` from ``t``: by the LLM when one is configured, else with the
    best-matching passages and their timecodes."""
    question = " ".join(question.split())
    if not question:
        raise AskError("the question is empty")
    if len(question) > MAX_QUESTION_CHARS:
        raise AskError(f"the question has {len(question)} characters; at most {MAX_QUESTION_CHARS}")
    if top_k < 1:
        raise AskError(f"top_k must be at least 1, got {top_k}")
    passages = retrieve(t, question, top_k)
    if not passages:
        return Answer(question=question, answer="The transcript has no speech.")
    embedded = Answer(question=question, answer=_quote(passages), passages=passages)
    if settings is None or not llm_configured(settings):
        return embedded
    try:
        return _llm_answer(question, passages, settings)
    except LLMError as exc:
        log.warning("LLM answer for %s failed, returning passages: %s", t.id, exc)
        return embedded.model_copy(update={"fallback_reason": str(exc)})
