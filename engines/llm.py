"""Summaries from any OpenAI-compatible chat endpoint (vLLM, llama.cpp server, Ollama, ...).

The transcript goes out as timecoded lines with segment ids; the reply must be one JSON
object of the summary's shape. Items citing segments or times that are not in the
transcript are dropped; when nothing valid is left, or the call fails in any way, the
embedded summarizer answers instead and ``fallback_reason`` says why.

Blocking HTTP: call these from a worker thread, not from a coroutine.
"""

import json
import logging
import re
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from config.settings import Settings
from engines.base import EngineError
from engines.summarizer import summarize
from protocol.transcript import ActionItem, Cited, Summary, Transcript

log = logging.getLogger(__name__)

# how far an item's times may stray from the segments it cites
TIME_TOLERANCE_S = 1.0

SUMMARY_INSTRUCTIONS = """You summarize meeting transcripts.
Each transcript line is: <segment id> [<start>s-<end>s] <speaker>: <text>
Reply with one JSON object and nothing else, of this shape:
{"summary": [{"text": str, "start": float, "end": float, "segment_ids": [str]}],
 "topics": [{"text": str, "start": float, "end": float, "segment_ids": [str]}],
 "action_items": [{"text": str, "owner": str or null, "due": str or null,
                   "start": float, "end": float, "segment_ids": [str]}],
 "decisions": [{"text": str, "start": float, "end": float, "segment_ids": [str]}]}
summary: 3 to 6 sentences covering the meeting. topics: one item per subject discussed.
action_items: tasks someone committed to or was asked to do; owner is the person who will
do it, due is the deadline as stated. decisions: what was decided or agreed.
Every item must cite the segment ids it comes from and their start and end times in seconds,
copied from the transcript lines. Do not invent ids or times."""


class LLMError(EngineError):
    """The endpoint could not give a usable answer; the message is the reason."""


def _seconds(value: Any) -> Any:
    # models sometimes copy timecodes as "00:01:02.5" rather than seconds
    if isinstance(value, str) and re.fullmatch(r"\d+(?::\d+){1,2}(?:\.\d+)?", value.strip()):
        seconds = 0.0
        for part in value.strip().split(":"):
            seconds = seconds * 60 + float(part)
        return seconds
    return value


class _Item(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: str = Field(min_length=1)
    start: float
    end: float
    segment_ids: list[str] = Field(default_factory=list)

    _parse_times = field_validator("start", "end", mode="before")(_seconds)


class _Action(_Item):
    owner: str | None = None
    due: str | None = None


class _Reply(BaseModel):
    model_config = ConfigDict(extra="ignore")

    summary: list[_Item] = Field(default_factory=list)
    topics: list[_Item] = Field(default_factory=list)
    action_items: list[_Action] = Field(default_factory=list)
    decisions: list[_Item] = Field(default_factory=list)


def llm_configured(settings: Settings) -> bool:
    return bool(settings.postcall.llm_base_url and settings.postcall.llm_model)


def transcript_lines(t: Transcript) -> str:
    return "\n".join(
        f"{s.id} [{s.start:.1f}s-{s.end:.1f}s] {t.speaker_name(s.speaker)}: {' '.join(s.text.split())}"
        for s in sorted(t.segments, key=lambda s: (s.start, s.end))
        if s.text.strip()
    )


def _strip_fence(content: str) -> str:
    match = re.fullmatch(r"\s*```(?:json)?\s*(.*?)\s*```\s*", content, flags=re.DOTALL)
    return match.group(1) if match else content


def chat_json(settings: Settings, messages: list[dict[str, str]]) -> dict[str, Any]:
    """One chat completion in JSON mode, parsed; raises :class:`LLMError` with the reason."""
    config = settings.postcall
    if not llm_configured(settings):
        raise LLMError("no LLM endpoint configured (postcall.llm_base_url, postcall.llm_model)")
    url = f"{(config.llm_base_url or '').rstrip('/')}/chat/completions"
    headers = {"Authorization": f"Bearer {config.llm_api_key}"} if config.llm_api_key else {}
    body = {
        "model": config.llm_model,
        "messages": messages,
        "temperature": 0,
        "response_format": {"type": "json_object"},
    }
    try:
        response = httpx.post(url, json=body, headers=headers, timeout=config.llm_timeout_s)
    except httpx.TimeoutException as exc:
        raise LLMError(f"LLM request timed out after {config.llm_timeout_s:g} s") from exc
    except httpx.HTTPError as exc:
        raise LLMError(f"LLM request failed: {type(exc).__name__}: {exc}") from exc
    if response.status_code != 200:
        raise LLMError(f"LLM endpoint answered HTTP {response.status_code}: {response.text[:200]}")
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise LLMError(f"LLM response is not a chat completion: {response.text[:200]}") from exc
    try:
        parsed = json.loads(_strip_fence(content or ""))
    except json.JSONDecodeError as exc:
        raise LLMError(f"LLM returned invalid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise LLMError(f"LLM returned JSON {type(parsed).__name__}, not an object")
    return parsed


def cite(item: _Item, t: Transcript) -> Cited | None:
    """The item tied to existing segments, or None if it cites anything that is not there."""
    segments = {s.id: s for s in t.segments}
    if item.start > item.end or item.start < 0 or item.end > t.duration + TIME_TOLERANCE_S:
        return None
    if item.segment_ids:
        if any(i not in segments for i in item.segment_ids):
            return None
        cited = [segments[i] for i in dict.fromkeys(item.segment_ids)]
    else:
        cited = [s for s in t.segments if s.start < item.end and item.start < s.end] or [
            s
            for s in t.segments
            if s.start - TIME_TOLERANCE_S <= item.end and item.start <= s.end + TIME_TOLERANCE_S
        ]
        if not cited:
            return None
    lo, hi = min(s.start for s in cited), max(s.end for s in cited)
    if item.start < lo - TIME_TOLERANCE_S or item.end > hi + TIME_TOLERANCE_S:
        return None
    return Cited(
        text=item.text.strip(), start=item.start, end=item.end, segment_ids=[s.id for s in cited]
    )


def summarize_llm(t: Transcript, settings: Settings) -> Summary:
    """The endpoint's summary with every item checked against ``t``; raises :class:`LLMError`."""
    lines = transcript_lines(t)
    limit = settings.postcall.llm_max_prompt_chars
    if len(lines) > limit:
        raise LLMError(f"transcript has {len(lines)} characters, over llm_max_prompt_chars={limit}")
    reply = chat_json(
        settings,
        [
            {"role": "system", "content": SUMMARY_INSTRUCTIONS},
            {"role": "user", "content": lines},
        ],
    )
    try:
        parsed = _Reply.model_validate(reply)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise LLMError(
            f"LLM reply does not match the summary schema: {where}: {first['msg']}"
        ) from exc

    def checked(items: list[_Item]) -> list[Cited]:
        return [c for c in (cite(i, t) for i in items) if c is not None]

    actions = []
    for action in parsed.action_items:
        cited = cite(action, t)
        if cited is not None:
            actions.append(ActionItem(**cited.model_dump(), owner=action.owner, due=action.due))
    summary = Summary(
        summary=checked(parsed.summary),
        topics=checked(parsed.topics),
        action_items=actions,
        decisions=checked(parsed.decisions),
        generator="llm",
    )
    given = sum(len(getattr(parsed, k)) for k in ("summary", "topics", "action_items", "decisions"))
    kept = sum(len(getattr(summary, k)) for k in ("summary", "topics", "action_items", "decisions"))
    if t.segments and kept == 0:
        raise LLMError(
            f"LLM summary has no item citing the transcript ({given} given, all rejected)"
            if given
            else "LLM summary is empty"
        )
    if kept < given:
        log.warning(
            "dropped %d of %d LLM summary items citing times or segments not in %s",
            given - kept,
            given,
            t.id,
        )
    return summary


def summarize_with(t: Transcript, settings: Settings) -> Summary:
    """The LLM's summary when one is configured and answers well, else the embedded one."""
    if not llm_configured(settings):
        return summarize(t)
    try:
        return summarize_llm(t, settings)
    except LLMError as exc:
        log.warning("LLM summary of %s failed, using the embedded summarizer: %s", t.id, exc)
        return summarize(t).model_copy(update={"fallback_reason": str(exc)})
