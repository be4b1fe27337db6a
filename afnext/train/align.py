"""Transcript alignment: an attention prior that shows the LLM which stretch of speech each word is.

An opt-in training aid (``optim.align_weight``; 0, the default, turns it off). Why it exists: on the
nano speedrun the LLM starts from random weights, and a transcript is the one answer that must walk
the audio in order, word by word. Learned from the answers alone, the walk is slow to find (stage 0b
spends most of its ~2,500 steps on transcription; stage0.toml records the measurements), for the same
reason as the onset look-up (``afnext.train.grounding``): while attention is spread over the whole
clip, what it reads says nothing about the next word. The remedy is the one text-to-speech models use
for the same monotonic alignment (guided attention): supervise where some heads look.

For each word of a transcription answer, the positions that predict its tokens are taught, in
``optim.align_layer`` and heads ``optim.align_heads``, to put their attention on the audio tokens where
that word is spoken: the loss is ``-log`` of that mass (its gradient does not vanish at uniform
attention). The synthetic corpus records one speech segment per transcription clip (``labels.segments``:
start and end of the speech); no per-word timing exists, so the segment is split among the words in
proportion to their spoken length (letters, digits spelled out, plus a pause each), and each window is
widened by ``PAD_S`` on both sides for the estimate's error. Clips whose labels lack a single speech
segment, or whose answer's words differ from the transcript's, get no targets and train as before.

Measured 2026-12-07 on 2 cores, stage 0b (configs/nano/stage0.toml with transcription at x12) run for
1,200 steps from the same stage 0a export, same data order, with and without the prior (weight 0.1,
layer 1, heads 0-2): held-out WER 6.9 % against 40.6 % (commands 6.0 / 28.9 %, digits 7.6 / 50.4 %),
multiple choice 64 % both; the transcription answer loss over steps 601-700 0.61 against 1.32 nats/token
on command words. The prior's own -log mass fell to 0.3 within 400 steps. (That run used a first
version of this code that also aligned the closing <|im_end|> with the last word.)

The loss is computed in a forward hook on the chosen attention module (as the grounding loss is), from
the layer's own input and weights: the model code knows nothing of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from afnext.audio import TOKEN_SECONDS
from afnext.train.grounding import answer_spans, head_log_attention

ALIGNED_TASKS = ("asr",)  # manifest ``task`` values whose answers are aligned
PAD_S = 0.08  # seconds added on each side of a word's estimated window (2 audio tokens)
PAUSE_LETTERS = 2  # a word's share of the segment: its spoken letters plus this many for the gap after it
SPOKEN_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class WordAlign:
    """One transcript word of a sample: its answer tokens [lo, hi) and its audio tokens [audio_lo, audio_hi),
    as positions in the sample's ``input_ids``."""

    lo: int
    hi: int
    audio_lo: int
    audio_hi: int


def spoken_length(word: str) -> int:
    """Letters spoken for ``word``: a lone digit is said as its English name."""
    return len(SPOKEN_DIGITS[int(word)]) if len(word) == 1 and word.isdigit() else len(word)


def word_windows(words: list[str], start_s: float, end_s: float) -> list[tuple[float, float]]:
    """(start, end) in seconds of each word, the speech [start_s, end_s) split in proportion to each
    word's spoken length plus a pause."""
    weights = [spoken_length(w) + PAUSE_LETTERS for w in words]
    total, done, out = sum(weights), 0, []
    span = end_s - start_s
    for w in weights:
        out.append((start_s + span * done / total, start_s + span * (done + w) / total))
        done += w
    return out


def token_words(pieces: list[str]) -> list[int]:
    """The word index of each token of an answer, given the text each prefix of it decodes to
    (``pieces[i]`` = the decoded tokens 0..i): a token belongs to the word its text ends in."""
    return [len(text.split()) - 1 for text in pieces]


def align_sample(input_ids: torch.Tensor, labels: torch.Tensor, extra: dict | None, audio_token_id: int,
                 decode, special_ids: set[int]) -> list[WordAlign]:
    """The aligned words of one tokenized sample (``input_ids``, ``labels`` 1-D), from its manifest row's
    ``extra`` (task, labels); ``decode(ids) -> str``; ``special_ids``: tokens that belong to no word
    (the answer's closing ``<|im_end|>``). Empty when the sample cannot be aligned (module docstring)."""
    extra = extra or {}
    info = extra.get("labels") or {}
    segments = info.get("segments") or []
    words = str(info.get("transcript") or "").split()
    if extra.get("task") not in ALIGNED_TASKS or len(segments) != 1 or not words:
        return []
    spans = answer_spans(labels)
    slots = (input_ids == audio_token_id).nonzero().flatten()
    if len(spans) != 1 or slots.numel() == 0 or int(slots[-1] - slots[0]) + 1 != slots.numel():
        return []
    lo, hi = spans[0]
    ids = [int(t) for t in input_ids[lo:hi]]
    kept = [i for i, t in enumerate(ids) if t not in special_ids]
    owner = token_words([decode([ids[i] for i in kept[: j + 1]]) for j in range(len(kept))])
    if not owner or owner[-1] != len(words) - 1 or decode([ids[i] for i in kept]).split() != words:
        return []
    first, n_audio = int(slots[0]), int(slots.numel())
    seg = segments[0]
    out = []
    for k, (a, b) in enumerate(word_windows(words, float(seg["start_s"]), float(seg["end_s"]))):
        toks = [lo + kept[j] for j, o in enumerate(owner) if o == k]
        a_lo = max(0, math.floor((a - PAD_S) / TOKEN_SECONDS))
        a_hi = min(n_audio, math.ceil((b + PAD_S) / TOKEN_SECONDS))
        if toks and a_hi > a_lo:
            out.append(WordAlign(min(toks), max(toks) + 1, first + a_lo, first + a_hi))
    return out


class AlignProbe:
    """Collects, for one forward pass, ``-log`` attention mass of ``heads`` on each word's audio window.

    ``targets``: (queries, spans, word, start, shared) per aligned sample of the packed row: the
    positions whose attention is supervised (1-D long), each one's [lo, hi) window as a (n, 2) long
    tensor (row positions), each one's word (0, 1, ... within the sample), the first row position of
    the sample's own tokens, and the length of the row's shared prefix (``afnext.train.prefix_sharing``;
    0 for none): a query sees the shared prefix and its own sample's keys up to itself. A sample's keys
    are projected once for all its words. After the forward, ``losses`` holds one scalar per word: the
    mean over its queries and the heads of -log(mass)."""

    def __init__(self, heads: list[int], targets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]]):
        self.heads = list(heads)
        self.targets = targets
        self.losses: list[torch.Tensor] = []

    def __call__(self, module, args, output) -> None:
        x, cos, sin = args[0], args[1], args[2]
        for queries, spans, word, start, shared in self.targets:
            keys = torch.cat([torch.arange(shared), torch.arange(start, int(queries.max()) + 1)]).to(x.device)
            log_p = head_log_attention(module, x, cos, sin, self.heads, queries, keys)
            inside = (keys[None, :] >= spans[:, :1].to(keys.device)) & (keys[None, :] < spans[:, 1:].to(keys.device))
            mass = torch.logsumexp(log_p.masked_fill(~inside[None], float("-inf")), dim=-1)  # (h, n)
            per_query = -mass.mean(0)  # (n,)
            word = word.to(per_query.device)
            sums = torch.zeros(int(word.max()) + 1, device=per_query.device).index_add(0, word, per_query)
            counts = torch.bincount(word)
            self.losses.extend((sums / counts).unbind())


def align_targets(aligns: list[list[WordAlign]], bounds: list[int], flat: torch.Tensor, shared: int = 0) -> list:
    """AlignProbe targets of a packed row: ``aligns`` per sample (positions within the sample),
    ``bounds`` the row's ``cu_seqlens``, ``flat`` its labelled logit positions (the logit at p predicts
    token p + 1), ``shared`` the length of its shared prefix (its first segment; 0 for none)."""
    targets = []
    for i, aligned in enumerate(aligns):
        start = bounds[i + 1] if shared else bounds[i]  # the row position of the sample's token `shared`
        off = start - shared  # sample position -> row position
        queries, spans, word = [], [], []
        for w in aligned:
            q = flat[(flat >= off + w.lo - 1) & (flat < off + w.hi - 1)]
            if q.numel():  # a word cut off by the stage's token cap has no labelled logits
                spans.append(torch.tensor([[off + w.audio_lo, off + w.audio_hi]]).expand(q.numel(), 2))
                word.append(torch.full((q.numel(),), len(queries), dtype=torch.long))
                queries.append(q)
        if queries:
            targets.append((torch.cat(queries), torch.cat(spans), torch.cat(word), start, shared))
    return targets
