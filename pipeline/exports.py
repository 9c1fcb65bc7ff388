"""Transcript exports: JSON, SubRip, WebVTT and plain text.

Subtitles follow common captioning conventions: at most two lines of 42 characters per cue,
cues split at word boundaries using word timestamps (proportional times when a segment has
no words), every cue shown for 1 to 7 seconds and never overlapping the next one.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

from protocol.errors import ErrorCode
from protocol.transcript import Segment, Transcript

ExportFormat = Literal["json", "srt", "vtt", "txt"]

MAX_LINE_CHARS = 42
MAX_LINES = 2
MIN_CUE_MS = 1000
MAX_CUE_MS = 7000
# a cue may close early at a sentence end once it holds this much text
SENTENCE_BREAK_CHARS = 20
MAX_LABEL_CHARS = 20
MIN_CUE_WORDS = 3


class ExportError(ValueError):
    code = ErrorCode.UNSUPPORTED_FORMAT

    def __init__(self, fmt: str) -> None:
        super().__init__(f"unknown export format {fmt!r}; expected one of {get_args(ExportFormat)}")
        self.fmt = fmt


@dataclass(frozen=True)
class _Token:
    text: str
    start: float
    end: float


@dataclass
class _Cue:
    start: int
    end: int
    lines: list[str]
    speaker: str


def _segment_tokens(segment: Segment) -> list[_Token]:
    if segment.words:
        tokens = [
            _Token(w.word.strip(), w.start, max(w.start, w.end))
            for w in segment.words
            if w.word.strip()
        ]
    else:
        pieces = segment.text.split()
        total = sum(len(p) + 1 for p in pieces) or 1
        span = max(0.0, segment.end - segment.start)
        tokens, at = [], segment.start
        for piece in pieces:
            step = span * (len(piece) + 1) / total
            tokens.append(_Token(piece, at, at + step))
            at += step
    return [part for token in tokens for part in _split_long(token)]


def _split_long(token: _Token) -> list[_Token]:
    if len(token.text) <= MAX_LINE_CHARS:
        return [token]
    parts = [token.text[i : i + MAX_LINE_CHARS] for i in range(0, len(token.text), MAX_LINE_CHARS)]
    step = (token.end - token.start) / len(parts)
    return [
        _Token(part, token.start + i * step, token.start + (i + 1) * step)
        for i, part in enumerate(parts)
    ]


def _wrap(words: list[str]) -> list[str] | None:
    """The most balanced split of ``words`` into lines that fit, or None if they cannot."""
    text = " ".join(words)
    if len(text) <= MAX_LINE_CHARS:
        return [text]
    splits = [(" ".join(words[:i]), " ".join(words[i:])) for i in range(1, len(words))]
    fitting = [s for s in splits if max(len(s[0]), len(s[1])) <= MAX_LINE_CHARS]
    if not fitting:
        return None
    top, bottom = min(fitting, key=lambda s: abs(len(s[0]) - len(s[1])))
    return [top, bottom]


def _segment_cues(segment: Segment, speaker: str, label: str | None) -> list[_Cue]:
    tokens = _segment_tokens(segment)
    if not tokens:
        return []
    if label is not None:
        tokens.insert(0, _Token(label, tokens[0].start, tokens[0].start))
    groups: list[list[_Token]] = []
    # indexes of groups that only ended because the next word did not fit
    full: set[int] = set()
    current: list[_Token] = []
    for token in tokens:
        candidate = [*current, token]
        if current and not _fits(candidate):
            full.add(len(groups))
            groups.append(current)
            current = [token]
        else:
            current = candidate
        if (
            token.text[-1] in ".?!"
            and len(" ".join(t.text for t in current)) >= SENTENCE_BREAK_CHARS
        ):
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    for n in sorted(full):
        _rebalance(groups[n], groups[n + 1])
    cues = []
    for group in groups:
        lines = _wrap([t.text for t in group])
        assert lines is not None
        cues.append(_Cue(round(group[0].start * 1000), round(group[-1].end * 1000), lines, speaker))
    return cues


def _fits(tokens: list[_Token]) -> bool:
    return (
        tokens[-1].end - tokens[0].start <= MAX_CUE_MS / 1000
        and _wrap([t.text for t in tokens]) is not None
    )


def _rebalance(full: list[_Token], after: list[_Token]) -> None:
    """Move words from a full cue into the one after it so that one does not hold a lone word."""
    while len(after) < MIN_CUE_WORDS and len(full) > MIN_CUE_WORDS:
        moved = [full[-1], *after]
        if not _fits(moved):
            return
        after.insert(0, full.pop())


def _cues(t: Transcript, labels: bool) -> list[_Cue]:
    cues: list[_Cue] = []
    previous_speaker: str | None = None
    for segment in sorted(t.segments, key=lambda s: (s.start, s.end)):
        name = t.speaker_name(segment.speaker)
        label = None
        if labels and segment.speaker != previous_speaker:
            label = f"{name[:MAX_LABEL_CHARS]}:"
        new = _segment_cues(segment, name, label)
        if new:
            previous_speaker = segment.speaker
        cues.extend(new)
    return _retime(cues)


def _retime(cues: list[_Cue]) -> list[_Cue]:
    """Give every cue 1 to 7 s on screen without overlapping the next.

    A cue shorter than the minimum grows into the gap after it; where the next cue starts
    too soon (overlapping speakers), that next cue is shown a little later instead.
    """
    cues.sort(key=lambda c: (c.start, c.end))
    previous_end = 0
    for i, cue in enumerate(cues):
        start = max(cue.start, previous_end)
        end = min(max(cue.end, start + MIN_CUE_MS), start + MAX_CUE_MS)
        if i + 1 < len(cues):
            end = min(end, max(cues[i + 1].start, start + MIN_CUE_MS))
        cue.start, cue.end = start, end
        previous_end = end
    return cues


def _clock(ms: int, separator: str) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{separator}{millis:03d}"


def _escape_vtt(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_json(t: Transcript) -> str:
    return t.model_dump_json(indent=2)


def to_srt(t: Transcript) -> str:
    labels = len({s.speaker for s in t.segments}) > 1
    blocks = [
        f"{n}\n{_clock(c.start, ',')} --> {_clock(c.end, ',')}\n" + "\n".join(c.lines)
        for n, c in enumerate(_cues(t, labels), start=1)
    ]
    return "\n\n".join(blocks) + "\n" if blocks else ""


def to_vtt(t: Transcript) -> str:
    blocks = ["WEBVTT"]
    for c in _cues(t, labels=False):
        voice = _escape_vtt(c.speaker).replace("\n", " ")
        text = "\n".join(_escape_vtt(line) for line in c.lines)
        blocks.append(f"{_clock(c.start, '.')} --> {_clock(c.end, '.')}\n<v {voice}>{text}")
    return "\n\n".join(blocks) + "\n"


def to_txt(t: Transcript) -> str:
    lines = []
    for segment in sorted(t.segments, key=lambda s: (s.start, s.end)):
        text = " ".join(segment.text.split())
        if text:
            stamp = _clock(int(segment.start * 1000), ".")[:8]
            lines.append(f"[{stamp}] {t.speaker_name(segment.speaker)}: {text}")
    return "\n".join(lines) + "\n" if lines else ""


_RENDERERS: dict[str, Callable[[Transcript], str]] = {
    "json": to_json,
    "srt": to_srt,
    "vtt": to_vtt,
    "txt": to_txt,
}


def render(t: Transcript, fmt: ExportFormat) -> str:
    """The transcript in one export format; raises :class:`ExportError` for an unknown one."""
    renderer = _RENDERERS.get(fmt)
    if renderer is None:
        raise ExportError(fmt)
    return renderer(t)
