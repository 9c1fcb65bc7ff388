import json
from collections.abc import Iterator

import pytest

from engines.ask import AskError, ask, retrieve
from protocol.transcript import Transcript
from tests.fake_llm import FakeLLM, Reply, fake_llm
from tests.meeting import meeting


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with fake_llm() as fake:
        yield fake


@pytest.fixture(scope="module")
def t() -> Transcript:
    return meeting()


def test_retrieval_finds_the_segment_that_answers(t: Transcript) -> None:
    passages = retrieve(t, "Which database did we decide to use?", top_k=5)
    assert len(passages) == 5
    # the decision does not say "database": the model still ranks it among the database talk
    assert {p.segment_id for p in passages} == {
        "seg-001",
        "seg-002",
        "seg-003",
        "seg-004",
        "seg-006",
    }
    assert [p.score for p in passages] == sorted((p.score for p in passages), reverse=True)
    assert retrieve(t, "Who sends the report and when?", top_k=1)[0].segment_id == "seg-011"
    hiring = retrieve(t, "How many candidates did the recruiting agency send?", top_k=1)[0]
    assert hiring.segment_id == "seg-016"
    assert (hiring.speaker, hiring.start, hiring.end) == (
        "Alice",
        t.segments[16].start,
        t.segments[16].end,
    )


def test_without_llm_the_answer_quotes_passages_with_timecodes(t: Transcript) -> None:
    answer = ask(t, "  Who sends the finance report?  ")
    assert answer.generator == "embedded"
    assert answer.question == "Who sends the finance report?"
    assert len(answer.passages) == 5
    top = {p.segment_id for p in answer.passages[:2]}
    assert top & {"seg-011", "seg-012"}
    first_line = answer.answer.splitlines()[0]
    best = answer.passages[0]
    assert first_line.startswith(f"[00:00:{int(best.start):02d}] {best.speaker}: ")
    assert first_line.endswith(best.text)


def test_llm_answers_from_the_retrieved_passages(llm: FakeLLM, t: Transcript) -> None:
    llm.reply_json(
        {
            "answer": "Bob will send the report by Friday (at 58.6s).",
            "segment_ids": ["seg-012", "seg-011"],
        }
    )
    answer = ask(t, "Who sends the report and when?", llm.settings())
    assert answer.generator == "llm"
    assert answer.answer == "Bob will send the report by Friday (at 58.6s)."
    assert [p.segment_id for p in answer.passages] == ["seg-012", "seg-011"]
    prompt = llm.requests[-1][1]["messages"][-1]["content"]
    assert "Question: Who sends the report and when?" in prompt
    assert "seg-011 [" in prompt and prompt.count("\nseg-") == 5


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (
            Reply(json.dumps({"answer": "Carol did.", "segment_ids": ["seg-999"]})),
            "cites none of the passages",
        ),
        (Reply(json.dumps({"answer": ""})), "does not match the schema"),
        (Reply("not json"), "invalid JSON"),
        (Reply("{}", status=500), "HTTP 500"),
    ],
)
def test_bad_llm_answer_falls_back_to_passages(
    llm: FakeLLM, t: Transcript, reply: Reply, reason: str
) -> None:
    llm.respond = lambda _: reply
    answer = ask(t, "Who sends the report?", llm.settings())
    assert answer.generator == "embedded"
    assert answer.fallback_reason is not None and reason in answer.fallback_reason
    assert answer.passages and answer.answer.startswith("[")


def test_bad_questions_are_precise_errors(t: Transcript) -> None:
    with pytest.raises(AskError, match="empty") as err:
        ask(t, "   ")
    assert err.value.code == "INVALID_REQUEST"
    with pytest.raises(AskError, match="at most 2000"):
        ask(t, "why " * 600)
    with pytest.raises(AskError, match="top_k"):
        ask(t, "why?", top_k=0)


def test_empty_transcript_has_nothing_to_answer_with() -> None:
    answer = ask(Transcript(id="e", model="m", duration=0.0), "What was decided?")
    assert answer.passages == []
    assert answer.answer == "The transcript has no speech."
