"""Grounding loss: one attention head of the LLM is taught where the asked-about event starts.

An opt-in training aid (``optim.grounding_weight``; 0, the default, turns it off). Why it exists: an
onset answer ("12.4s") needs the answer position to single out the ~3 audio tokens where the named
event starts, among up to 1,500, and to read their time. Trained from the answers alone, a randomly
initialised LLM has to discover the selection and the read-out together: while attention is
near-uniform, the average it reads says nothing about the answer, so the read-out learns nothing, so
the selection gets no signal. A pretrained LLM arrives with such look-ups; a nano one trained from
scratch does not. The loss below is ``-log`` of the attention mass some heads put on the target
tokens, whose gradient does not vanish at uniform attention (it is ``1 - mass`` on each target logit).

Selecting the right event needs the asked-about name at the answer position first (a second look-up,
from the answer back to the question), and that one starts just as diluted among the audio tokens.
So an optional second probe (``optim.grounding_label_layer``) teaches an earlier layer's heads to look
from the answer at the question's words naming the event.

Measured on the nano model from stage 0a, 300 steps of 5-15-s onset clips alone (4,800 clips): the
onset term alone makes the head find the onsets of *all* 2-3 events (-log mass 0.7-0.9); with the
name term too it finds the asked one (-log mass 0.03); the median onset error on held-out 5-15-s clips
goes 2.05 s (no grounding) -> 1.55 s (onset term) -> 1.35 s (both), chance 2.85 s. But the answer loss
moves little (0.87 -> 0.84 nats): reading the time out of the attended tokens is now the slow part,
and it is not yet fast enough to pay inside the 30-minute nano speedrun, which therefore leaves this off.

``optim.grounding_mode = "word"`` moves the look-up to the question: the event word's last token
looks at the onset tokens (``grounding_label_layer``, where the word's own embedding is the query) and
the answer positions look at that word (``grounding_layer``), so the found time sits at a text
position one look-up from the answer. In ``experiments/onset_readout.py`` (``--word-grounding``) this
was the first variant whose answers used what was found: held-out median onset error on 10-60-s clips
1.00 s after 600 steps, where grounding the answer itself stayed at 5-8 s. In the trainer, on the
multi-turn ``event_onset_all`` clips with the encoder frozen (experiments/stage0_onset.toml), 300
steps of 4 clips from a stage-0b export that had learnt the finding (held-out 6.95 s by the readout's
scoring) gave 1.15 s in `afnext eval synthetic` (grounding weight 0.3 and reads 0.2; at weights 1 and 1, 5.55 s: the
summed per-answer terms then outweigh the answers).

The labels are data the synthetic corpus already has (``labels.onset_s`` and ``labels.target`` of
``event_onset`` items; ``labels.asked`` of the multi-turn ``event_onset_all`` items, one grounded
answer per event). The loss is computed inside the attention module's forward (a forward hook), so it sees the layer's
weights while FSDP has them unsharded; the model code knows nothing of it.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from afnext.audio import TOKEN_SECONDS
from afnext.model.afnext import IGNORE_INDEX
from afnext.model.llm import apply_rope

GROUNDED_TASKS = ("event_onset", "event_onset_all")  # manifest ``task`` values whose onsets are grounded
SPAN_S = 0.12  # seconds from the labelled onset that count as "the start" (3 tokens; the fade-in is 5 ms)


@dataclass(frozen=True)
class Ground:
    """One grounded answer of a sample, as [lo, hi) token positions: the answer's labelled tokens, the
    audio tokens where its event starts, and the question's word(s) for the event (None: not found)."""
    answer: tuple[int, int]
    onset: tuple[int, int]
    word: tuple[int, int] | None = None


def _onset(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0 else None


def asked_events(extra: dict | None) -> list[tuple[float | None, str | None]]:
    """(onset s, words naming the event) for each answer of a grounded item, in answer order; [] otherwise.

    ``event_onset`` items answer one question (``labels.onset_s``, ``labels.target``);
    ``event_onset_all`` items ask every event in turn (``labels.asked``: [{label, onset_s}, ...])."""
    from afnext.data.families.sound import NOUN

    extra = extra or {}
    labels = extra.get("labels") or {}
    if extra.get("task") == "event_onset":
        return [(_onset(labels.get("onset_s")), NOUN.get(labels.get("target")))]
    if extra.get("task") == "event_onset_all":
        return [(_onset(a.get("onset_s")), NOUN.get(a.get("label"))) for a in labels.get("asked") or []
                if isinstance(a, dict)]
    return []


def answer_spans(labels: torch.Tensor) -> list[tuple[int, int]]:
    """[lo, hi) positions of each assistant answer's labelled tokens (1-D labels), in order."""
    spans: list[list[int]] = []
    for p in (labels != IGNORE_INDEX).nonzero().flatten().tolist():
        if spans and p == spans[-1][1]:
            spans[-1][1] = p + 1
        else:
            spans.append([p, p + 1])
    return [(lo, hi) for lo, hi in spans]


def ground_sample(input_ids: torch.Tensor, labels: torch.Tensor, audio_token_id: int,
                  events: list[tuple[float | None, str | None]], encode=None) -> list[Ground]:
    """The sample's grounded answers: answer k is paired with ``events[k]``. None of them when the answers
    and events do not pair up (a turn cut by a cap, or labels that do not match the conversation); an
    answer is left out when its onset is unknown or beyond the audio. ``encode`` (text -> token ids) finds
    each event's word(s) in the last question before its answer; None skips that."""
    answers = answer_spans(labels)
    if len(answers) != len(events):
        return []
    grounds = []
    for answer, (onset_s, name) in zip(answers, events):
        span = grounding_span(input_ids, audio_token_id, onset_s) if onset_s is not None else None
        if span is None:
            continue
        word = word_span(input_ids, encode(" " + name), answer[0]) if encode is not None and name else None
        grounds.append(Ground(answer, span, word))
    return grounds


def word_span(input_ids: torch.Tensor, word_ids: list[int], before: int) -> tuple[int, int] | None:
    """[lo, hi) of the last occurrence of ``word_ids`` in ``input_ids[:before]``, or None."""
    n = len(word_ids)
    if n == 0:
        return None
    ids = input_ids[:before].tolist()
    for lo in range(len(ids) - n, -1, -1):
        if ids[lo: lo + n] == word_ids:
            return lo, lo + n
    return None


def grounding_span(input_ids: torch.Tensor, audio_token_id: int, onset_s: float,
                   span_s: float = SPAN_S) -> tuple[int, int] | None:
    """[lo, hi) positions in ``input_ids`` (1-D) of the audio tokens covering [onset_s, onset_s + span_s).

    Token i of an audio covers [i, i + 1) x 40 ms from the audio's start (windows are 750 tokens =
    30 s, so this holds across windows). None when the sample has not exactly one audio run or the
    onset lies beyond its audio (cut by a stage cap)."""
    slots = (input_ids == audio_token_id).nonzero().flatten()
    if slots.numel() == 0 or int(slots[-1] - slots[0]) + 1 != slots.numel():
        return None
    first = int(slots[0])
    lo = int(math.floor(onset_s / TOKEN_SECONDS + 1e-6))
    hi = max(lo + 1, int(math.ceil((onset_s + span_s) / TOKEN_SECONDS - 1e-6)))
    hi = min(hi, slots.numel())
    if lo >= hi:
        return None
    return first + lo, first + hi


class GroundingProbe:
    """Collects, for one forward pass, ``-log`` attention mass of ``heads`` on each target span.

    ``targets``: (queries, lo, hi, start[, row]) per grounded sample: the positions whose attention is
    supervised (1-D long tensor), the target span [lo, hi), the sample's first position (keys before it
    belong to another sample of a packed row) and the batch row (0 when left out). After the forward,
    ``losses`` holds one scalar per target: the mean over its queries and the heads of -log(mass)."""

    def __init__(self, heads: list[int], targets: list[tuple[torch.Tensor, int, int, int]]):
        self.heads = list(heads)
        self.targets = targets
        self.losses: list[torch.Tensor] = []

    def __call__(self, module, args, output) -> None:
        x, cos, sin = args[0], args[1], args[2]
        for queries, lo, hi, start, *row in self.targets:
            keys = torch.arange(start, int(queries.max()) + 1, device=x.device)
            log_p = head_log_attention(module, x, cos, sin, self.heads, queries, keys, row[0] if row else 0)
            mass = torch.logsumexp(log_p[..., lo - start: hi - start], dim=-1)
            self.losses.append(-mass.mean())


def head_log_attention(module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: list[int],
                       queries: torch.Tensor, keys: torch.Tensor, row: int = 0) -> torch.Tensor:
    """log attention probabilities (h, n queries, len(keys)) of ``heads`` of ``module`` (an
    ``afnext.model.llm.Attention``) from the positions ``queries`` of batch row ``row`` over the
    positions ``keys`` only (ascending), causal, recomputed from the layer's input ``x`` and RoPE tables."""
    d = module.head_dim
    heads_t = torch.tensor(heads, device=x.device)
    kv_heads = heads_t // (module.heads // module.kv_heads)  # grouped-query attention: each head's key head
    rc = row if cos.shape[0] > 1 else 0  # positions shared by every row, or one set per row
    q = module.q_proj(x[row, queries]).view(-1, module.heads, d)[:, heads_t].transpose(0, 1)  # (h, n, d)
    k = module.k_proj(x[row, keys]).view(-1, module.kv_heads, d)[:, kv_heads].transpose(0, 1)
    q = apply_rope(q[None], cos[rc: rc + 1, queries], sin[rc: rc + 1, queries])[0]
    k = apply_rope(k[None], cos[rc: rc + 1, keys], sin[rc: rc + 1, keys])[0]
    scores = (q.float() @ k.float().transpose(1, 2)) / math.sqrt(d)  # (h, n, keys)
    keys = keys.to(scores.device)
    scores = scores.masked_fill(keys[None, None, :] > queries[None, :, None].to(scores.device), float("-inf"))
    return F.log_softmax(scores, dim=-1)


@contextmanager
def probe_attention(attention: torch.nn.Module, probe):
    """Run ``probe`` (a forward hook: ``GroundingProbe``, ``afnext.train.align.AlignProbe``) on every forward
    of ``attention`` (an ``afnext.model.llm.Attention``) inside the block."""
    handle = attention.register_forward_hook(probe)
    try:
        yield probe
    finally:
        handle.remove()
