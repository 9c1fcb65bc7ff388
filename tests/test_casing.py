from engines.casing import case_text, normalize_casing
from tests.meeting import build


def test_sentence_starts_and_pronoun_i() -> None:
    assert case_text('hello there. i think i\'m right, i.e. we go. what? yes! "quoted" end') == (
        'Hello there. I think I\'m right, i.e. we go. What? Yes! "Quoted" end'
    )
    assert case_text("e.g. this stays. dr. smith too") == "E.g. this stays. Dr. smith too"
    assert case_text("continued from before", sentence_start=False) == "continued from before"


def test_truecase_restores_names_without_lowering_anything() -> None:
    text = "i met bob in new york on monday. the API uses json."
    cased = case_text(text, truecase=True)
    assert cased == "I met Bob in New York on Monday. The API uses json."
    assert len(cased) == len(text)


def test_transcript_words_follow_the_text() -> None:
    t = build(
        [
            ("a", "so i met bob yesterday and"),
            ("b", "right. i agree."),
            ("a", "we talked about the launch."),
        ],
        {"a": "Alice", "b": "Bob"},
    )
    cased = normalize_casing(t, truecase=True)
    first, second, third = cased.segments
    assert first.text == "So I met Bob yesterday and"
    assert [w.word for w in first.words] == ["So", " I", " met", " Bob", " yesterday", " and"]
    assert second.text == "Right. I agree."
    # Alice's earlier segment ended mid-sentence, so this one continues it
    assert third.text == "we talked about the launch."
    assert [(w.start, w.end) for w in first.words] == [
        (w.start, w.end) for w in t.segments[0].words
    ]
    assert normalize_casing(cased, truecase=True) == cased
