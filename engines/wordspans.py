"""Where each timed word of a segment sits in the segment's text."""

from collections.abc import Sequence

from protocol.frames import Word


def word_spans(text: str, words: Sequence[Word]) -> list[tuple[int, int] | None]:
    """Character span of every word in ``text``, searched left to right; None where not found."""
    spans: list[tuple[int, int] | None] = []
    cursor = 0
    for word in words:
        needle = word.word.strip()
        at = text.find(needle, cursor) if needle else -1
        if at < 0:
            spans.append(None)
            continue
        spans.append((at, at + len(needle)))
        cursor = at + len(needle)
    return spans


def replace_span(word: Word, text: str) -> Word:
    """The word with new text, keeping the leading space the recognizer put in front of it."""
    lead = word.word[: len(word.word) - len(word.word.lstrip())]
    return word.model_copy(update={"word": lead + text})
