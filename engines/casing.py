"""Consistent casing: capital sentence starts, a capital "I", and optionally truecasing of
names, days and places with the ``truecase`` package's statistics.

Only letters change case, so every word keeps its place in the segment text and the timed
words are updated from the same characters.
"""

import re
import threading
from typing import Any

from engines.wordspans import replace_span, word_spans
from protocol.transcript import Segment, Transcript

_PRONOUN_I = re.compile(r"(?<![\w'’])i(?=['’](?:m|ll|ve|d)\b|[\s,!?;:]|\.(?!\w)|$)")
_SENTENCE_START = re.compile(r"(?:^|[.?!][\"')\]]*\s+)([\"'(\[]*)([^\W\d_])")
_ABBREVIATIONS = ("e.g.", "i.e.", "vs.", "mr.", "mrs.", "ms.", "dr.", "st.", "approx.")
_TOKEN = re.compile(r"[^\W\d_]{2,}")

_truecaser: Any = None
_truecaser_lock = threading.Lock()


def _get_truecaser() -> Any:
    """The truecase model, loaded once (about 6 s: a 76 MB table of n-gram counts)."""
    global _truecaser
    with _truecaser_lock:
        if _truecaser is None:
            from truecase import get_truecaser

            _truecaser = get_truecaser()
        return _truecaser


def _truecase(chars: list[str], text: str) -> None:
    tokens = list(_TOKEN.finditer(text))
    if not tokens:
        return
    # the library capitalizes its first token as a sentence start: a leading comma absorbs that;
    # punctuation is left out so that words after "e.g." are not taken for sentence starts
    cased = _get_truecaser().get_true_case_from_tokens(
        [","] + [m.group().lower() for m in tokens], "as-is"
    )[1:]
    for match, suggestion in zip(tokens, cased, strict=True):
        token = match.group()
        if token.islower() and suggestion.lower() == token and len(suggestion) == len(token):
            chars[match.start() : match.end()] = list(suggestion)


def case_text(text: str, sentence_start: bool = True, truecase: bool = False) -> str:
    """``text`` with consistent casing; the result has exactly the input's length."""
    chars = list(text)
    if truecase:
        _truecase(chars, text)
    for match in _PRONOUN_I.finditer(text):
        chars[match.start()] = "I"
    for match in _SENTENCE_START.finditer(text):
        at = match.start(2)
        if at == 0 or match.start() == 0:
            if not sentence_start:
                continue
        elif text[: match.start() + 1].lower().endswith(_ABBREVIATIONS):
            continue
        upper = chars[at].upper()
        if len(upper) == 1:
            chars[at] = upper
    return "".join(chars)


def _ends_sentence(text: str) -> bool:
    return text.rstrip().rstrip("\"')]").endswith((".", "?", "!"))


def case_segment(segment: Segment, sentence_start: bool = True, truecase: bool = False) -> Segment:
    text = case_text(segment.text, sentence_start, truecase)
    if text == segment.text:
        return segment
    words = []
    for word, span in zip(segment.words, word_spans(segment.text, segment.words), strict=True):
        if span is None:
            words.append(word)
        else:
            words.append(replace_span(word, text[span[0] : span[1]]))
    return segment.model_copy(update={"text": text, "words": words})


def normalize_casing(t: Transcript, truecase: bool = False) -> Transcript:
    """A copy of ``t`` with consistent casing in segment text and words.

    A segment starts a sentence unless the same speaker's previous segment ended mid-sentence.
    """
    last_text: dict[str, str] = {}
    segments = list(t.segments)
    for n in sorted(range(len(segments)), key=lambda n: (segments[n].start, segments[n].end)):
        segment = segments[n]
        previous = last_text.get(segment.speaker)
        starts = previous is None or _ends_sentence(previous)
        segments[n] = case_segment(segment, starts, truecase)
        if segment.text.strip():
            last_text[segment.speaker] = segment.text
    return t.model_copy(update={"segments": segments})
