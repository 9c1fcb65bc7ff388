"""PII redaction for transcripts, written for speech: digits may come spaced out or as
number words ("four one one one ...") and e-mail addresses may be spoken ("bob at example dot com").

Numbers are only masked when they validate: cards by the Luhn check, IBANs by mod 97, US
social security numbers by their area/group/serial rules, so ordinary figures stay readable.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

from engines.wordspans import replace_span, word_spans
from protocol.frames import Word
from protocol.transcript import Segment, Transcript

PiiKind = Literal["email", "phone", "card", "ssn", "iban"]
ALL_KINDS: tuple[PiiKind, ...] = get_args(PiiKind)


class RedactionError(ValueError):
    code = "INVALID_REQUEST"


@dataclass(frozen=True)
class Finding:
    kind: PiiKind
    start: int
    end: int

    @property
    def placeholder(self) -> str:
        return f"[{self.kind.upper()}]"


_NUMBER_WORDS = {
    "zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9",
}  # fmt: skip
_DIGIT_UNIT = r"(?:\d+|" + "|".join(_NUMBER_WORDS) + r")"
# a run of digit groups or digit words joined by spaces, dashes, dots or a comma
_DIGIT_RUN = re.compile(
    rf"(?<![\w+])(?:\+\s?)?\(?{_DIGIT_UNIT}\)?(?:(?:[ \-.]|,\s|\)\s?)\(?{_DIGIT_UNIT}\)?)*(?!\w)",
    re.IGNORECASE,
)

_TLDS = r"(?:com|org|net|edu|gov|io|co|uk|de|fr|eu|us|ca|ai|dev|app|info|biz|me)"
_EMAIL_WRITTEN = re.compile(r"[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)*\.[a-z]{2,}\b", re.IGNORECASE)
_EMAIL_SPOKEN = re.compile(
    r"\b[a-z0-9_\-]+(?:(?:\s+dot\s+|\.)[a-z0-9_\-]+)*"
    r"\s+(?:at|@)\s+"
    rf"[a-z0-9\-]+(?:(?:\s+dot\s+|\.)[a-z0-9\-]+)*(?:\s+dot\s+|\.){_TLDS}\b",
    re.IGNORECASE,
)
# "look at the dot com boom" is not an address: spoken addresses start and end on a name
_NOT_ADDRESS_WORDS_TEXT = """
a an the this that it is was be look looking looked arrive arrived aim aimed good bad best
at in on of for to we you they he she i me us
"""
_NOT_ADDRESS_WORDS = frozenset(_NOT_ADDRESS_WORDS_TEXT.split())
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:\s?[A-Z0-9]{1,4}){3,9}\b", re.IGNORECASE)

_PROFANITY = ("fuck", "shit", "bitch", "bastard", "asshole", "dickhead", "motherfucker", "bullshit")
_PROFANITY_RE = re.compile(
    r"\b(?:" + "|".join(_PROFANITY) + r")(?:s|es|ed|er|ers|ing|ty|y)?\b", re.IGNORECASE
)


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    compact = iban.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34 or not compact.isalnum():
        return False
    rotated = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rotated)) % 97 == 1


def ssn_valid(digits: str) -> bool:
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return (
        len(digits) == 9
        and area not in ("000", "666")
        and not area.startswith("9")
        and group != "00"
        and serial != "0000"
    )


def _digits(run: str) -> tuple[str, list[int]]:
    """The digits of a run and the length of each group as spoken or written."""
    groups = [
        _NUMBER_WORDS.get(unit.lower(), unit)
        for unit in re.findall(_DIGIT_UNIT, run, flags=re.IGNORECASE)
    ]
    return "".join(groups), [len(g) for g in groups]


def _classify_number(run: str) -> PiiKind | None:
    digits, groups = _digits(run)
    single_digits = all(g == 1 for g in groups)
    if 13 <= len(digits) <= 19 and luhn_valid(digits):
        return "card"
    if len(digits) == 9 and (groups in ([3, 2, 4], [9]) or single_digits) and ssn_valid(digits):
        return "ssn"
    if run.lstrip().startswith("+") and 8 <= len(digits) <= 15:
        return "phone"
    if len(digits) == 10 or (len(digits) == 11 and digits[0] == "1"):
        return "phone"
    if len(digits) == 7 and (groups == [3, 4] or single_digits):
        return "phone"
    return None


def _number_findings(text: str, kinds: set[PiiKind]) -> list[Finding]:
    found = []
    for match in _DIGIT_RUN.finditer(text):
        run = match.group().rstrip(" -.,)")
        kind = _classify_number(run)
        if kind in kinds:
            start = match.start()
            if run.startswith("(") and ")" not in run:
                start += 1
            found.append(Finding(kind, start, start + len(run.rstrip())))
    return found


def _iban_findings(text: str) -> list[Finding]:
    found = []
    for match in _IBAN.finditer(text):
        pieces = match.group().split(" ")
        # the pattern may run into following words; shorten until the check digits agree
        for n in range(len(pieces), 0, -1):
            candidate = " ".join(pieces[:n])
            if iban_valid(candidate):
                found.append(Finding("iban", match.start(), match.start() + len(candidate)))
                break
    return found


def _plausible_spoken_address(spoken: str) -> bool:
    local, domain = re.split(r"\s+(?:at|@)\s+", spoken, maxsplit=1, flags=re.IGNORECASE)
    names = (re.split(r"\s+dot\s+|\.", local)[-1], re.split(r"\s+dot\s+|\.", domain)[0])
    return not any(name.lower() in _NOT_ADDRESS_WORDS for name in names)


def find_pii(text: str, kinds: Iterable[PiiKind] = ALL_KINDS) -> list[Finding]:
    """Non-overlapping findings in text order; on overlap the longer one wins."""
    wanted = set(kinds)
    unknown = wanted - set(ALL_KINDS)
    if unknown:
        raise RedactionError(
            f"unknown PII kinds {sorted(unknown)}; expected some of {list(ALL_KINDS)}"
        )
    candidates: list[Finding] = []
    if "email" in wanted:
        candidates += [Finding("email", m.start(), m.end()) for m in _EMAIL_WRITTEN.finditer(text)]
        candidates += [
            Finding("email", m.start(), m.end())
            for m in _EMAIL_SPOKEN.finditer(text)
            if _plausible_spoken_address(m.group())
        ]
    if "iban" in wanted:
        candidates += _iban_findings(text)
    candidates += _number_findings(text, wanted)
    chosen: list[Finding] = []
    for finding in sorted(candidates, key=lambda f: f.start - f.end):
        if all(finding.end <= c.start or finding.start >= c.end for c in chosen):
            chosen.append(finding)
    return sorted(chosen, key=lambda f: f.start)


def _apply(text: str, findings: Iterable[Finding], offset: int = 0) -> str:
    out, cursor = [], 0
    for f in findings:
        out.append(text[cursor : f.start - offset])
        out.append(f.placeholder)
        cursor = f.end - offset
    out.append(text[cursor:])
    return "".join(out)


def redact_text(text: str, kinds: Iterable[PiiKind] = ALL_KINDS) -> tuple[str, list[Finding]]:
    """``text`` with each finding replaced by ``[KIND]``; finding offsets refer to the input."""
    findings = find_pii(text, kinds)
    return _apply(text, findings), findings


def _redact_words(
    text: str, words: list[Word], findings: list[Finding], kinds: set[PiiKind]
) -> list[Word]:
    spans = word_spans(text, words)
    out: list[Word] = []
    i = 0
    while i < len(words):
        span = spans[i]
        if span is None:
            out.append(replace_span(words[i], redact_text(words[i].word.strip(), kinds)[0]))
            i += 1
            continue
        hits = [f for f in findings if f.start < span[1] and f.end > span[0]]
        if not hits:
            out.append(words[i])
            i += 1
            continue
        # the words a finding covers become one masked word spanning their times
        lo, hi = min(span[0], *(f.start for f in hits)), max(span[1], *(f.end for f in hits))
        j = i + 1
        while j < len(words) and (nxt := spans[j]) is not None and nxt[0] < hi:
            hi = max(hi, nxt[1], *(f.end for f in findings if f.start < nxt[1] and f.end > nxt[0]))
            j += 1
        hits = [f for f in findings if f.start < hi and f.end > lo]
        merged = words[i].model_copy(
            update={"end": words[j - 1].end, "confidence": min(w.confidence for w in words[i:j])}
        )
        out.append(replace_span(merged, _apply(text[lo:hi], hits, offset=lo).strip()))
        i = j
    return out


def redact_segment(
    segment: Segment, kinds: Iterable[PiiKind] = ALL_KINDS
) -> tuple[Segment, list[Finding]]:
    wanted = set(kinds)
    text, findings = redact_text(segment.text, wanted)
    words = _redact_words(segment.text, list(segment.words), findings, wanted)
    if not findings and words == segment.words:
        return segment, []
    return segment.model_copy(update={"text": text, "words": words}), findings


def _mask_profanity_segment(segment: Segment) -> Segment:
    text = mask_profanity(segment.text)
    if text == segment.text:
        return segment
    words = [replace_span(w, mask_profanity(w.word.strip())) for w in segment.words]
    return segment.model_copy(update={"text": text, "words": words})


def redact_transcript(
    t: Transcript, kinds: Iterable[PiiKind] = ALL_KINDS, profanity: bool = False
) -> Transcript:
    """A copy of ``t`` with PII (and optionally swear words) masked in segment text and words
    alike; ``redacted`` lists what was masked."""
    wanted = set(kinds)
    find_pii("", wanted)
    segments = [redact_segment(s, wanted)[0] for s in t.segments]
    masked: set[str] = set(wanted)
    if profanity:
        segments = [_mask_profanity_segment(s) for s in segments]
        masked.add("profanity")
    return t.model_copy(update={"segments": segments, "redacted": sorted(set(t.redacted) | masked)})


def mask_profanity(text: str) -> str:
    """Swear words from a small built-in list shown as their first letter and asterisks."""
    return _PROFANITY_RE.sub(lambda m: m.group()[0] + "*" * (len(m.group()) - 1), text)
