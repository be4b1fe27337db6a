"""Post-processing for the AF-Next "Think" variant.

The Think model emits ``<think> temporally grounded reasoning </think> final answer``.
This module splits that into reasoning and answer and pulls out the timestamps the
reasoning cites ("the siren starts at 1:05", "[11.0 - 14.0]") as :class:`Evidence`.

Design:

* Tag splitting is a small state machine over ``<think>`` / ``</think>`` matches
  (case-insensitive, whitespace tolerated inside the tag), so the same code handles
  literal tags and tags decoded from special tokens, a missing opening tag (text
  before the first ``</think>`` is reasoning), an unterminated block (everything
  after ``<think>`` is reasoning) and several blocks (joined with ``"\\n"``; answer
  pieces between blocks are joined with ``"\\n"`` too).  Tags present but empty
  give reasoning ``""``; only the absence of any tag gives ``None``.
* Timestamp extraction is regex based and deliberately conservative: a number is a
  time only with a *time cue* -- a clock form (``m:ss``, ``h:mm:ss``), a seconds unit
  (``s``, ``sec``, ``seconds``), a ``<t=...>`` tag, or enclosing brackets around a
  pair (``[11.0 - 14.0]``).  "3 dogs", "120 BPM", "2024", "version 1.5" are ignored.
  Decades ("1980s", "'90s") are not read as seconds; a bare "the 90s" still is,
  because "the 30s mark" is a genuine timestamp and the two cannot be told apart.
* Ranges are matched first (brackets, then ``from/between X to/and Y``, then bare
  ``X-Y`` whose end carries a cue, e.g. "10-12 s"); single points are only taken where no range
  already covered the text.  A reversed range is normalised so ``start_s <= end_s``
  (the model's intent is the interval, not the direction).
* ``out_of_range`` is set when any value is negative, or when ``duration_s`` is
  known and ``end_s > duration_s + RANGE_TOLERANCE_S`` (50 ms absorbs rounding of
  the final timestamp, e.g. "10.0s" for a 9.98 s clip).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

RANGE_TOLERANCE_S = 0.05


@dataclass
class Evidence:
    start_s: float
    end_s: float
    text: str
    out_of_range: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ThinkOutput:
    reasoning: str | None
    answer: str
    evidence: list[Evidence] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "reasoning": self.reasoning,
            "answer": self.answer,
            "evidence": [e.to_dict() for e in self.evidence],
        }


# --------------------------------------------------------------------------- tags

_THINK_TAG = re.compile(r"<\s*(/?)\s*think\s*>", re.IGNORECASE)


def split_reasoning(text: str) -> tuple[str | None, str]:
    """Split model output into ``(reasoning, answer)``; reasoning is None without tags."""
    tags = list(_THINK_TAG.finditer(text))
    if not tags:
        return None, text.strip()
    # A close tag before any open tag means generation started inside the block
    # (e.g. the prompt already ended with <think>).
    inside = tags[0].group(1) == "/"
    blocks: list[str] = []
    answer: list[str] = []
    current: list[str] = []
    pos = 0
    for m in tags:
        (current if inside else answer).append(text[pos:m.start()])
        pos = m.end()
        is_close = m.group(1) == "/"
        if is_close and inside:
            blocks.append("".join(current))
            current, inside = [], False
        elif not is_close and not inside:
            inside = True
        # Otherwise a redundant/stray tag: drop it, keep the current state.
    (current if inside else answer).append(text[pos:])
    if inside:  # unterminated <think>: hit the token limit mid-reasoning
        blocks.append("".join(current))
    reasoning = "\n".join(b.strip() for b in blocks if b.strip())
    return reasoning, "\n".join(a.strip() for a in answer if a.strip())


# --------------------------------------------------------------------- timestamps

_UNIT = r"(?:\s*(?:seconds?|secs?|s)\b)"
# Fields after a colon must be two digits so ratios like "3:2" are not clock times.
_CLOCK = r"\d{1,2}(?::\d{2}){1,2}(?:\.\d+)?(?![\d:])"
_NUM = r"\d+(?:\.\d+)?"
_T = rf"-?(?:{_CLOCK}|{_NUM}){_UNIT}?"
# A time must start a token: not mid-number, not after a letter or an apostrophe
# ("'80s"), and a '-' directly before it belongs to something else ("x-3s").
_LB = r"(?<![\w.:'\u2019-])"
_SEP = r"\s*(?:[-\u2013\u2014~]|to\b)\s*"

_BRACKET = re.compile(rf"[\[(]\s*({_T})\s*(?:[-\u2013\u2014~,]|to\b)\s*({_T})\s*[\])]", re.I)
_FROM = re.compile(
    rf"\b(?:from|between)\s+({_T})\s*(?:[-\u2013\u2014~]|(?:to|and|until|till|through)\b)\s*({_T})",
    re.I,
)
_BARE = re.compile(rf"{_LB}({_T}){_SEP}({_T})", re.I)
_TAG = re.compile(r"<\s*t\s*=\s*(-?\d+(?:\.\d+)?)\s*>", re.I)
_SINGLE = re.compile(rf"{_LB}(-?(?:{_CLOCK}{_UNIT}?|{_NUM}{_UNIT}))", re.I)
_DECADE = re.compile(r"(?:1\d|20)\d0s", re.I)
_BOUNDARY = re.compile(r"[.!?;](?=\s|$)|\n")
_TS = re.compile(r"(-)?(\d+(?::\d+){0,2}(?:\.\d+)?)(?:\s*(?:seconds?|secs?|s))?", re.I)


def parse_timestamp(s: str) -> float:
    """Parse "12.3s", "12 seconds", "1:05", "01:02:03", "1:02:03.5", "65.2" to seconds."""
    m = _TS.fullmatch(s.strip())
    if not m:
        raise ValueError(f"not a timestamp: {s!r}")
    parts = m.group(2).split(":")
    if any("." in p for p in parts[:-1]):
        raise ValueError(f"fraction before the seconds field: {s!r}")
    if len(parts) > 1 and any(len(p.split(".")[0]) != 2 or float(p) >= 60 for p in parts[1:]):
        raise ValueError(f"bad minutes/seconds field: {s!r}")
    value = 0.0
    for p in parts:
        value = value * 60 + float(p)
    return -value if m.group(1) else value


def _cued(token: str) -> bool:
    return ":" in token or bool(re.search(r"[a-z]", token, re.I))


def _clause(text: str, start: int, end: int) -> str:
    """The sentence/clause around text[start:end], terminal punctuation included."""
    lo, hi = 0, len(text)
    for b in _BOUNDARY.finditer(text):
        if b.end() <= start:
            lo = b.end()
        elif b.start() >= end:
            hi = b.end()
            break
    return text[lo:hi].strip()


def extract_evidence(text: str, duration_s: float | None = None) -> list[Evidence]:
    """Find time ranges and points in ``text``, in order of appearance."""
    found: list[tuple[int, int, float, float]] = []

    def free(a: int, b: int) -> bool:
        return all(b <= s or a >= e for s, e, _, _ in found)

    def take(m: re.Match, toks: tuple[str, ...], cue_in: tuple[str, ...] = ()) -> None:
        # cue_in: tokens of which at least one must carry a time cue (empty: no check).
        if not free(m.start(), m.end()) or (cue_in and not any(map(_cued, cue_in))):
            return
        try:
            vals = [parse_timestamp(t) for t in toks]
        except ValueError:
            return
        found.append((m.start(), m.end(), min(vals), max(vals)))

    for m in _BRACKET.finditer(text):
        take(m, m.groups())  # the brackets themselves are the cue
    for m in _FROM.finditer(text):
        take(m, m.groups(), cue_in=m.groups())  # "from 3 to 5 dogs" is not a time
    for m in _BARE.finditer(text):
        # The end must be cued ("10-12 s", "1:00-1:30"): "at 3 s - 5 dogs" is no range.
        take(m, m.groups(), cue_in=(m.group(2),))
    for m in _TAG.finditer(text):
        take(m, m.groups())
    for m in _SINGLE.finditer(text):
        if not _DECADE.fullmatch(m.group(1)):
            take(m, m.groups())  # the regex already demands a cue

    out: list[Evidence] = []
    seen: set[tuple[float, float, str]] = set()
    for a, b, lo, hi in sorted(found):
        clause = _clause(text, a, b)
        if (lo, hi, clause) in seen:
            continue
        seen.add((lo, hi, clause))
        bad = lo < 0 or (duration_s is not None and hi > duration_s + RANGE_TOLERANCE_S)
        out.append(Evidence(lo, hi, clause, bad))
    return out


def parse_think_output(text: str, duration_s: float | None = None) -> ThinkOutput:
    """Split Think-variant output and collect evidence from reasoning, then answer."""
    reasoning, answer = split_reasoning(text)
    evidence = extract_evidence(reasoning or "", duration_s) + extract_evidence(answer, duration_s)
    unique: list[Evidence] = []
    for e in evidence:  # the answer often repeats a reasoning clause verbatim
        if all((e.start_s, e.end_s, e.text) != (u.start_s, u.end_s, u.text) for u in unique):
            unique.append(e)
    return ThinkOutput(reasoning, answer, unique)
