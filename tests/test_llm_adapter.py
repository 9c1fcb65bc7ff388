import json
from collections.abc import Iterator
from typing import Any

import pytest

from config.settings import Settings
from engines.llm import summarize_with
from protocol.transcript import Transcript
from tests.conftest import free_port
from tests.fake_llm import FakeLLM, Reply, fake_llm
from tests.meeting import assert_cites_transcript, meeting


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with fake_llm() as fake:
        yield fake


@pytest.fixture(scope="module")
def t() -> Transcript:
    return meeting()


def _span(t: Transcript, *ids: str) -> dict[str, Any]:
    cited = [s for s in t.segments if s.id in ids]
    return {"start": cited[0].start, "end": cited[-1].end, "segment_ids": list(ids)}


def _good_reply(t: Transcript) -> dict[str, Any]:
    return {
        "summary": [
            {
                "text": "The team chose Postgres for the billing service.",
                **_span(t, "seg-002", "seg-006"),
            },
            {
                "text": "The marketing launch is planned for March 14.",
                **_span(t, "seg-008", "seg-014"),
            },
        ],
        "topics": [
            # a model copying the timecode as a clock string is still understood
            {
                "text": "Billing database",
                "start": "00:00:11.5",
                "end": "00:00:40.7",
                "segment_ids": ["seg-002", "seg-007"],
            },
            {"text": "Hiring", **_span(t, "seg-015", "seg-018")},
        ],
        "action_items": [
            {
                "text": "Send the finance report",
                "owner": "Bob",
                "due": "Friday",
                **_span(t, "seg-011", "seg-012"),
            },
        ],
        "decisions": [{"text": "Use Postgres for billing", **_span(t, "seg-006")}],
        "confidence": "high",
    }


def test_valid_reply_is_used_and_the_request_is_openai_shaped(llm: FakeLLM, t: Transcript) -> None:
    llm.reply_json(_good_reply(t))
    s = summarize_with(t, llm.settings())
    assert s.generator == "llm"
    assert s.fallback_reason is None
    assert_cites_transcript(s, t)
    assert [(a.text, a.owner, a.due) for a in s.action_items] == [
        ("Send the finance report", "Bob", "Friday")
    ]
    assert [d.text for d in s.decisions] == ["Use Postgres for billing"]
    assert s.topics[0].start == pytest.approx(11.5)
    assert len(s.summary) == 2

    headers, body = llm.requests[-1]
    assert headers["Authorization"] == "Bearer sk-test"
    assert body["model"] == "test-model"
    assert body["response_format"] == {"type": "json_object"}
    prompt = body["messages"][-1]["content"]
    bob = t.segments[11]
    assert (
        f"seg-011 [{bob.start:.1f}s-{bob.end:.1f}s] Alice: Bob, can you send the report by Friday?"
        in prompt
    )
    assert len(prompt.splitlines()) == len(t.segments)


def test_fenced_json_is_accepted(llm: FakeLLM, t: Transcript) -> None:
    llm.respond = lambda _: Reply("```json\n" + json.dumps(_good_reply(t)) + "\n```")
    assert summarize_with(t, llm.settings()).generator == "llm"


def test_items_citing_what_is_not_in_the_transcript_are_dropped(
    llm: FakeLLM, t: Transcript
) -> None:
    reply = _good_reply(t)
    reply["action_items"].append(
        {
            "text": "Book the venue",
            "owner": "Carol",
            "start": 12.0,
            "end": 14.0,
            "segment_ids": ["seg-999"],
        }
    )
    reply["decisions"].append({"text": "Hire a designer", "start": 512.0, "end": 520.0})
    reply["summary"].append(
        {"text": "Alice opened the call.", "start": 80.0, "end": 82.0, "segment_ids": ["seg-000"]}
    )
    llm.reply_json(reply)
    s = summarize_with(t, llm.settings())
    assert s.generator == "llm"
    assert [a.text for a in s.action_items] == ["Send the finance report"]
    assert [d.text for d in s.decisions] == ["Use Postgres for billing"]
    assert len(s.summary) == 2
    assert_cites_transcript(s, t)


def test_item_without_ids_is_tied_to_the_segments_at_its_times(llm: FakeLLM, t: Transcript) -> None:
    seg = t.segments[6]
    llm.reply_json({"decisions": [{"text": "Postgres", "start": seg.start, "end": seg.end}]})
    s = summarize_with(t, llm.settings())
    assert s.decisions[0].segment_ids == ["seg-006"]


def _assert_embedded_fallback(s: Any, reason: str) -> None:
    assert s.generator == "embedded"
    assert s.fallback_reason is not None and reason in s.fallback_reason, s.fallback_reason
    # the embedded summary is complete, not a placeholder
    report = next(a for a in s.action_items if "report" in a.text)
    assert (report.owner, report.due) == ("Bob", "Friday")
    assert any("decided to use Postgres" in d.text for d in s.decisions)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Reply("Sure! Here is the summary: {summary: [the team chose Postgres]"), "invalid JSON"),
        (
            Reply(json.dumps({"summary": "The team chose Postgres."})),
            "does not match the summary schema: summary",
        ),
        (Reply(json.dumps({"decisions": [{"start": 1.0, "end": 2.0}]})), "decisions.0.text"),
        (Reply(json.dumps([1, 2])), "not an object"),
        (Reply(json.dumps({"summary": [], "decisions": []})), "LLM summary is empty"),
        (Reply('{"error": "model overloaded"}', status=503), "HTTP 503"),
    ],
)
def test_unusable_reply_falls_back(llm: FakeLLM, t: Transcript, reply: Reply, reason: str) -> None:
    llm.respond = lambda _: reply
    _assert_embedded_fallback(summarize_with(t, llm.settings()), reason)


def test_reply_citing_nothing_real_falls_back(llm: FakeLLM, t: Transcript) -> None:
    llm.reply_json(
        {"decisions": [{"text": "Use MySQL", "start": 1.0, "end": 2.0, "segment_ids": ["seg-404"]}]}
    )
    _assert_embedded_fallback(summarize_with(t, llm.settings()), "1 given, all rejected")


def test_slow_endpoint_times_out_and_falls_back(llm: FakeLLM, t: Transcript) -> None:
    llm.respond = lambda _: Reply(json.dumps(_good_reply(t)), delay_s=3.0)
    s = summarize_with(t, llm.settings(timeout_s=0.5))
    _assert_embedded_fallback(s, "timed out after 0.5 s")


def test_unreachable_endpoint_falls_back(t: Transcript) -> None:
    settings = Settings.model_validate(
        {
            "postcall": {
                "llm_base_url": f"http://127.0.0.1:{free_port()}/v1",
                "llm_model": "m",
                "llm_timeout_s": 2.0,
            }
        }
    )
    _assert_embedded_fallback(summarize_with(t, settings), "LLM request failed: ConnectError")


def test_no_llm_configured_means_embedded_without_a_reason(t: Transcript) -> None:
    s = summarize_with(t, Settings())
    assert s.generator == "embedded"
    assert s.fallback_reason is None


def test_transcript_too_long_for_the_prompt_falls_back_without_a_call(
    llm: FakeLLM, t: Transcript
) -> None:
    settings = llm.settings()
    settings.postcall.llm_max_prompt_chars = 500
    _assert_embedded_fallback(summarize_with(t, settings), "over llm_max_prompt_chars=500")
    assert llm.requests == []
