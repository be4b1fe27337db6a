"""Metrics, each implemented exactly as the benchmark that reports it defines it.

- `mmau_is_correct`: MMAU's string-match rule. With `tokens(s)` the lowercased `\\b\\w+\\b` words of s,
  a prediction is correct iff it is non-empty, contains every token of the answer, and contains no
  token of a wrong choice except tokens that also occur in the answer. Reasoning (`<think>...</think>`)
  is stripped first.
- `word_errors` / `corpus_wer`: word-level Levenshtein distance summed over the corpus, divided by the
  total reference words (corpus WER, not a mean of per-utterance WERs).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from afnext.think import split_reasoning

_WORD = re.compile(r"\b\w+\b")


def tokens(text: str) -> set[str]:
    return {t.lower() for t in _WORD.findall(text or "")}


def strip_reasoning(text: str) -> str:
    return split_reasoning(text or "")[1]


def mmau_is_correct(prediction: str, answer: str, choices: Sequence[str]) -> bool:
    pred = tokens(strip_reasoning(prediction))
    if not pred:
        return False
    ans = tokens(answer)
    if not ans <= pred:
        return False
    wrong = set()
    for c in choices:
        if c != answer:
            wrong |= tokens(c)
    return not ((wrong - ans) & pred)


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def normalize_simple(text: str) -> list[str]:
    """Lowercase, drop punctuation, split on whitespace (for synthetic transcripts)."""
    return re.sub(r"[^\w\s']", " ", (text or "").lower()).split()


def word_errors(ref: str, hyp: str, normalize=normalize_simple) -> tuple[int, int]:
    r, h = normalize(ref), normalize(hyp)
    return edit_distance(r, h), len(r)


def corpus_wer(pairs: Iterable[tuple[str, str]], normalize=normalize_simple) -> float:
    errors = words = 0
    for ref, hyp in pairs:
        e, n = word_errors(ref, hyp, normalize)
        errors, words = errors + e, words + n
    return errors / words if words else 0.0
