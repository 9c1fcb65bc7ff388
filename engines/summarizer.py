"""The embedded summarizer: no LLM, every item cites the transcript.

* summary: the most central sentences (LexRank over MiniLM embeddings), diversified with
  maximal marginal relevance, in time order;
* topics: runs of neighbouring sentences merged while they stay similar, labelled by their
  most distinctive keywords and most representative sentence;
* action items and decisions: sentence patterns ("Bob, can you ... by Friday?", "I'll ...",
  "we decided to ...").

CPU-bound (embeddings): call it from a worker thread, not from a coroutine.
"""

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engines.embeddings import embed
from engines.wordspans import word_spans
from protocol.transcript import ActionItem, Cited, Segment, Summary, Transcript

MMR_LAMBDA = 0.7
MIN_SUMMARY_WORDS = 5
MIN_TOPIC_SENTENCES = 3
SENTENCES_PER_TOPIC = 7
MAX_TOPICS = 8
TOPIC_WINDOW = 2
TOPIC_KEYWORDS = 3
DUPLICATE_ACTION_SIMILARITY = 0.8
# a request and the reply that takes it on share owner and due date, so less wording must match
SAME_OWNER_AND_DUE_SIMILARITY = 0.6
# only a restatement soon after counts as the same item
DUPLICATE_ACTION_WINDOW_S = 120.0


@dataclass(frozen=True)
class Sentence:
    text: str
    speaker: str
    segment_id: str
    start: float
    end: float


_BOUNDARY = re.compile(r"[.?!]+[\"')\]]*(?=\s|$)")


def _sentence_times(segment: Segment, lo: int, hi: int) -> tuple[float, float]:
    spans = word_spans(segment.text, segment.words)
    inside = [w for w, s in zip(segment.words, spans, strict=True) if s and s[0] < hi and s[1] > lo]
    if inside:
        return inside[0].start, inside[-1].end
    length = max(1, len(segment.text))
    span = max(0.0, segment.end - segment.start)
    return segment.start + span * lo / length, segment.start + span * hi / length


def split_sentences(t: Transcript) -> list[Sentence]:
    """Every sentence of every segment, in time order, with its own start and end."""
    sentences = []
    for segment in sorted(t.segments, key=lambda s: (s.start, s.end)):
        cuts = [0, *(m.end() for m in _BOUNDARY.finditer(segment.text)), len(segment.text)]
        for lo, hi in zip(cuts, cuts[1:], strict=False):
            piece = segment.text[lo:hi]
            text = piece.strip()
            if not any(ch.isalnum() for ch in text):
                continue
            lo += len(piece) - len(piece.lstrip())
            start, end = _sentence_times(segment, lo, lo + len(text))
            sentences.append(Sentence(text, segment.speaker, segment.id, start, end))
    return sentences


def _cite(text: str, members: Sequence[Sentence]) -> Cited:
    return Cited(
        text=text,
        start=min(s.start for s in members),
        end=max(s.end for s in members),
        segment_ids=list(dict.fromkeys(s.segment_id for s in members)),
    )


# summary


def _centrality(similarity: np.ndarray) -> np.ndarray:
    n = len(similarity)
    weights = np.clip(similarity, 0.0, None)
    np.fill_diagonal(weights, 0.0)
    rows = weights.sum(axis=1, keepdims=True)
    transition = np.where(rows > 0, weights / np.where(rows > 0, rows, 1.0), 1.0 / n)
    rank = np.full(n, 1.0 / n)
    for _ in range(50):
        rank = 0.15 / n + 0.85 * transition.T @ rank
    span = rank.max() - rank.min()
    return (rank - rank.min()) / span if span > 0 else np.ones(n)


def _extract(sentences: list[Sentence], vectors: np.ndarray, count: int) -> list[int]:
    similarity = vectors @ vectors.T
    centrality = _centrality(similarity)
    pool = [i for i, s in enumerate(sentences) if len(s.text.split()) >= MIN_SUMMARY_WORDS]
    pool = pool or list(range(len(sentences)))
    chosen: list[int] = []
    while pool and len(chosen) < count:

        def mmr(i: int) -> float:
            redundancy = max((similarity[i, j] for j in chosen), default=0.0)
            return MMR_LAMBDA * centrality[i] - (1 - MMR_LAMBDA) * redundancy

        best = max(pool, key=mmr)
        chosen.append(best)
        pool.remove(best)
    return sorted(chosen)


# topics


def _topic_groups(vectors: np.ndarray, target: int) -> list[list[int]]:
    """Cut the sentence sequence where the sentences before and after are least alike
    (TextTiling), at most ``target - 1`` times, leaving no topic shorter than the minimum."""
    n = len(vectors)
    gaps = []
    for cut in range(1, n):
        left = vectors[max(0, cut - TOPIC_WINDOW) : cut].mean(axis=0)
        right = vectors[cut : cut + TOPIC_WINDOW].mean(axis=0)
        norm = float(np.linalg.norm(left) * np.linalg.norm(right)) or 1.0
        gaps.append((float(left @ right) / norm, cut))
    median = float(np.median([g for g, _ in gaps])) if gaps else 0.0
    cuts: list[int] = []
    for similarity, cut in sorted(gaps):
        if len(cuts) >= target - 1 or similarity > median:
            break
        if min(cut, n - cut, *(abs(cut - c) for c in cuts)) >= MIN_TOPIC_SENTENCES:
            cuts.append(cut)
    bounds = [0, *sorted(cuts), n]
    return [list(range(lo, hi)) for lo, hi in zip(bounds, bounds[1:], strict=False)]


_STOPWORDS_TEXT = """
a about above after again all also am an and any are as at be because been before being
below between both but by can could did do does doing done down during each even every few
for from further get got had has have having he her here hers him his how i if in into is it
its just know let like lot make many me might more most much must my need no nor not now of
off ok okay on once one only or other our ours out over own really right same say see she
should so some still such sure than thank thanks that the their them then there these they
thing things think this those through to today too two under until up us very want was way
we well were what when where which while who why will with would yeah yes you your yours
going go good great morning everyone anything something next last mean maybe actually
week weeks day days month months time monday tuesday wednesday thursday friday
"""
_STOPWORDS = frozenset(_STOPWORDS_TEXT.split())
_KEYWORD = re.compile(r"[A-Za-z][A-Za-z\-']+")


def _keywords(groups: list[list[Sentence]]) -> list[list[str]]:
    spelled: dict[str, Counter[str]] = {}
    counts: list[Counter[str]] = []
    for group in groups:
        count: Counter[str] = Counter()
        for sentence in group:
            for word in _KEYWORD.findall(sentence.text):
                key = word.lower().strip("'-")
                if len(key) < 3 or key in _STOPWORDS:
                    continue
                count[key] += 1
                spelled.setdefault(key, Counter())[word] += 1
        counts.append(count)
    frequency = Counter(key for count in counts for key in count)
    labels = []
    for count in counts:
        scored = sorted(
            count,
            key=lambda k: (-count[k] * math.log(1 + len(groups) / frequency[k]), k),
        )
        labels.append([spelled[k].most_common(1)[0][0] for k in scored[:TOPIC_KEYWORDS]])
    return labels


def _topics(sentences: list[Sentence], vectors: np.ndarray) -> list[Cited]:
    target = min(MAX_TOPICS, max(1, round(len(sentences) / SENTENCES_PER_TOPIC)))
    groups = _topic_groups(vectors, target)
    members = [[sentences[i] for i in g] for g in groups]
    topics = []
    for group, group_sentences, keywords in zip(groups, members, _keywords(members), strict=True):
        centroid = vectors[group].mean(axis=0)
        representative = sentences[group[int(np.argmax(vectors[group] @ centroid))]]
        label = ", ".join(keywords)
        text = f"{label}: {representative.text}" if label else representative.text
        topics.append(_cite(text, group_sentences))
    return topics


# action items and decisions

_WEEKDAY = r"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday)"
_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_DATE = (
    rf"{_WEEKDAY}(?:\s+(?:morning|afternoon|evening))?|{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?"
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH}|\d{{4}}-\d{{2}}-\d{{2}}"
    r"|\d{1,2}/\d{1,2}(?:/\d{2,4})?|end\s+of\s+(?:the\s+)?(?:day|week|month|quarter|year)"
    r"|eod|eow|noon"
)
_RELATIVE = (
    r"today|tonight|tomorrow(?:\s+(?:morning|afternoon|evening))?"
    rf"|(?:this|next)\s+(?:week|month|quarter|{_WEEKDAY})"
)
_DUE = re.compile(
    rf"\b(?:(?:by|before|until|on|due|no\s+later\s+than)\s+(?:the\s+)?(?P<dated>{_DATE}|{_RELATIVE})"
    rf"|(?P<relative>{_RELATIVE}))\b",
    re.IGNORECASE,
)

_LEAD = r"^(?:(?:ok(?:ay)?|so|and|also|alright|then|great|right|oh|well|um|uh)\b,?\s+)*"
_REQUEST = r"(?:can|could|would|will)\s+you\s+(?:please\s+)?"
_ADDRESSED = re.compile(rf"{_LEAD}(?P<name>[A-Z][\w\-]+),\s+{_REQUEST}(?P<task>.+)$")
_ADDRESSED_LAST = re.compile(rf"{_LEAD}{_REQUEST}(?P<task>.+?),\s+(?P<name>[A-Z][\w\-]+)\W*$")
_ADDRESSED_PLEASE = re.compile(rf"{_LEAD}(?P<name>[A-Z][\w\-]+),\s+please\s+(?P<task>.+)$")
_ASKED = re.compile(rf"{_LEAD}(?:{_REQUEST}|please\s+)(?P<task>.+)$", re.IGNORECASE)
_FIRST_PERSON = re.compile(
    r"\b(?:I\s+will|I'll|I\s+am\s+going\s+to|I'm\s+going\s+to|I\s+can|let\s+me)\s+(?P<task>.+)$",
    re.IGNORECASE,
)
_TEAM = re.compile(
    r"\b(?:we\s+need\s+to|we\s+have\s+to|we\s+must|we\s+should|we'll\s+need\s+to|let's)\s+(?P<task>.+)$",
    re.IGNORECASE,
)
_THIRD_PERSON = re.compile(
    rf"{_LEAD}(?P<name>[A-Z][\w\-]+)\s+(?:will|is\s+going\s+to|needs\s+to)\s+(?P<task>.+)$"
)
_ACTION_ITEM = re.compile(r"\baction\s+item\s*[:,]?\s+(?P<task>.+)$", re.IGNORECASE)
_AFFIRMATION = re.compile(
    r"^(?:sure|yes|yeah|yep|ok(?:ay)?|will\s+do|of\s+course|absolutely|no\s+problem|I\s+will|I'll|on\s+it)\b",
    re.IGNORECASE,
)
_NOT_A_TASK = re.compile(
    r"^(?:be\b|just\s+say|say\b|think\b|guess\b|admit\b|bet\b|see\b|hear\b|tell\s+you\b|go\s+with\b"
    r"|use\b|pick\b|choose\b|stick\s+with\b|repeat\b|do\s+that\b|do\s+it\b|like\b|believe\b|imagine\b)",
    re.IGNORECASE,
)
_NOT_A_NAME_TEXT = """
okay ok so and also alright then great right oh well yes yeah no sure thanks please hey hi
sorry fine good
"""
_NOT_A_NAME = frozenset(_NOT_A_NAME_TEXT.split())
_DECISION = re.compile(
    r"\b(?:we(?:'ve|\s+have)?\s+decided|(?:we\s+)?agreed\s+(?:to|on|that)|let's\s+(?:go\s+with|use|stick\s+with)"
    r"|we(?:'ll|\s+will)\s+(?:go\s+with|use|adopt|stick\s+with)|we(?:'re|\s+are)\s+going\s+(?:to\s+go\s+)?with"
    r"|we(?:'re|\s+are)\s+going\s+to\s+use|the\s+decision\s+is|final\s+decision|decision\s*:"
    r"|we\s+settled\s+on|we\s+chose|we\s+picked)\b",
    re.IGNORECASE,
)


def _due(text: str) -> str | None:
    match = _DUE.search(text)
    if match is None:
        return None
    return " ".join((match.group("dated") or match.group("relative")).split())


def _task(text: str) -> str:
    task = text.strip().rstrip("?.!,; ")
    return task[:1].upper() + task[1:]


def _speaker_names(t: Transcript) -> dict[str, str]:
    return {t.speaker_name(s.id).lower(): t.speaker_name(s.id) for s in t.speakers}


def _owner_name(name: str, names: dict[str, str]) -> str | None:
    if name.lower() in _NOT_A_NAME:
        return None
    return names.get(name.lower(), name)


def _action(
    sentence: Sentence, reply: Sentence | None, t: Transcript, names: dict[str, str]
) -> tuple[str, str | None] | None:
    """The task and owner a sentence states, if it states one."""
    text = sentence.text
    for pattern in (_ADDRESSED, _ADDRESSED_LAST, _ADDRESSED_PLEASE):
        match = pattern.match(text)
        if match and (owner := _owner_name(match.group("name"), names)):
            return match.group("task"), owner
    match = _ASKED.match(text)
    if match:
        # "can you ...?" answered "sure" by another speaker: that speaker owns it
        owner = None
        if reply and reply.speaker != sentence.speaker and _AFFIRMATION.match(reply.text):
            owner = t.speaker_name(reply.speaker)
        return match.group("task"), owner
    match = _THIRD_PERSON.match(text)
    if match and match.group("name").lower() in names:
        return match.group("task"), names[match.group("name").lower()]
    match = _ACTION_ITEM.search(text)
    if match:
        return match.group("task"), None
    match = _FIRST_PERSON.search(text)
    if match:
        return match.group("task"), t.speaker_name(sentence.speaker)
    match = _TEAM.search(text)
    if match:
        return match.group("task"), None
    return None


def _actions(t: Transcript, sentences: list[Sentence]) -> list[ActionItem]:
    names = _speaker_names(t)
    found: list[tuple[ActionItem, list[Sentence]]] = []
    for n, sentence in enumerate(sentences):
        reply = sentences[n + 1] if n + 1 < len(sentences) else None
        stated = _action(sentence, reply, t, names)
        if stated is None:
            continue
        task, owner = stated
        task = _task(task)
        if len(task.split()) < 2 or _NOT_A_TASK.match(task):
            continue
        cited = _cite(task, [sentence])
        found.append((ActionItem(**cited.model_dump(), owner=owner, due=_due(task)), [sentence]))
    return _merge_duplicates(found)


def _merge_duplicates(found: list[tuple[ActionItem, list[Sentence]]]) -> list[ActionItem]:
    """A request and its owner's "I will ..." reply are one action item, cited twice."""
    if len(found) < 2:
        return [item for item, _ in found]
    vectors = embed([item.text for item, _ in found])
    kept: list[tuple[ActionItem, list[Sentence], int]] = []
    for n, (item, members) in enumerate(found):
        for k, (other, other_members, m) in enumerate(kept):
            similarity = float(vectors[n] @ vectors[m])
            same_owner = item.owner is not None and item.owner == other.owner
            same_due = (
                item.due is not None and (item.due or "").lower() == (other.due or "").lower()
            )
            threshold = (
                SAME_OWNER_AND_DUE_SIMILARITY
                if same_owner and same_due
                else DUPLICATE_ACTION_SIMILARITY
            )
            close = item.start - other.start <= DUPLICATE_ACTION_WINDOW_S
            compatible = (
                close
                and (item.owner is None or other.owner is None or same_owner)
                and (item.due is None or other.due is None or same_due)
            )
            if compatible and similarity >= threshold:
                merged = _cite(other.text, other_members + members)
                kept[k] = (
                    ActionItem(
                        **merged.model_dump(),
                        owner=other.owner or item.owner,
                        due=other.due or item.due,
                    ),
                    other_members + members,
                    m,
                )
                break
        else:
            kept.append((item, members, n))
    return [item for item, _, _ in kept]


def _decisions(sentences: list[Sentence]) -> list[Cited]:
    return [_cite(s.text, [s]) for s in sentences if _DECISION.search(s.text)]


def summarize(t: Transcript, max_sentences: int = 5) -> Summary:
    """Summary, topics, action items and decisions of ``t``, each citing its segments."""
    sentences = split_sentences(t)
    if not sentences:
        return Summary(generator="embedded")
    vectors = embed([s.text for s in sentences])
    count = min(max_sentences, max(1, math.ceil(len(sentences) / 4)))
    summary = [
        _cite(f"{t.speaker_name(sentences[i].speaker)}: {sentences[i].text}", [sentences[i]])
        for i in _extract(sentences, vectors, count)
    ]
    return Summary(
        summary=summary,
        topics=_topics(sentences, vectors),
        action_items=_actions(t, sentences),
        decisions=_decisions(sentences),
        generator="embedded",
    )
