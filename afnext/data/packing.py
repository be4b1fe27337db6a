"""Sequence packing: many variable-length samples per fixed-length row, with no attention across them.

Why pack. Training samples range from ~100 tokens (a 5-s clip and a one-line answer) to the stage's
context (45,000 audio tokens for 30 minutes). Padding a batch to its longest member wastes most of
the compute; packing fills fixed `budget`-token rows instead, which also keeps every step's shape
(and memory) constant.

Bin packing. `best_fit_pack` is best-fit decreasing: samples sorted longest first, each placed in the
open bin with the least room that still fits it, else a new bin. It never needs more than
11/9 OPT + 6/9 bins and, for many samples well below the budget, typically leaves under 5% padding. Ties are
broken by index (longer first, then lower sample index; among equally full bins the oldest), so the
same lengths always give the same bins.

Packed rows (`collate_packed`). One row of exactly `budget` tokens (B = 1), the samples back to back
and padding at the end. Isolation comes from three things, all needed for a packed sample to compute
what it computes alone:
- `cu_seqlens` (int32 boundaries, the padding being a segment of its own) makes attention
  block-diagonal causal (`model.attention`: SDPA/eager build the mask from it; a varlen flash kernel
  takes it directly);
- `position_ids` restart at 0 for each sample, so RoPE sees the positions it would see alone;
- the label of each sample's first token is IGNORE_INDEX, so the shifted loss never asks the last
  token of one sample to predict the first of the next (the chat template's first token is
  `<|im_start|>`, never a target anyway; the collator enforces it regardless).
Audio windows are concatenated in sample order. The model assigns windows to audios by walking the
`<sound>` runs of the row in order, so each sample's runs must stay contiguous and in order, which
concatenation preserves (and `<|sound_bos|>`/`<|sound_eos|>` keep adjacent audios' runs apart).

The model's `causal_lm_loss` on a packed row is the token mean over the whole row; a per-sample mean
needs the boundaries (see the tests for how to compute it from `cu_seqlens`).
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from dataclasses import dataclass

import torch

from afnext.data.tokenize import TrainSample
from afnext.model.afnext import IGNORE_INDEX


# --- bin packing ---------------------------------------------------------------------------------------
def best_fit_pack(lengths: list[int], budget: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing. Returns bins of sample indices (each bin ascending; bins in the
    order they were opened). Raises ValueError naming any sample longer than `budget`."""
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    lengths = [int(n) for n in lengths]
    for i, n in enumerate(lengths):
        if n < 0:
            raise ValueError(f"sample {i} has negative length {n}")
        if n > budget:
            raise ValueError(f"sample {i} has {n} tokens, more than the packing budget {budget}; "
                             "the stage caps (max_tokens) should have dropped it")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free tokens, bin index), sorted: bisect finds the tightest fit
    for i in order:
        j = bisect.bisect_left(room, (lengths[i], -1))
        if j == len(room):
            free, b = budget, len(bins)
            bins.append([])
        else:
            free, b = room.pop(j)
        bins[b].append(i)
        bisect.insort(room, (free - lengths[i], b))
    return [sorted(b) for b in bins]


@dataclass(frozen=True)
class PackingStats:
    n_samples: int
    n_bins: int
    budget: int
    total_tokens: int
    efficiency: float  # total_tokens / (n_bins * budget): 1.0 means no padding at all
    mean_length: float
    max_length: int


def packing_stats(lengths: list[int], budget: int) -> PackingStats:
    """How well `best_fit_pack` packs these lengths into `budget`-token rows."""
    bins = best_fit_pack(lengths, budget)
    total = int(sum(lengths))
    return PackingStats(
        n_samples=len(lengths), n_bins=len(bins), budget=budget, total_tokens=total,
        efficiency=total / (len(bins) * budget) if bins else 0.0,
        mean_length=total / len(lengths) if lengths else 0.0, max_length=max(lengths, default=0))


# --- collation -----------------------------------------------------------------------------------------
def _audio(samples: list[TrainSample]) -> dict:
    feats = [s.input_features for s in samples if s.input_features.shape[0]]
    if not feats:
        return {}  # text-only batch: the model then takes no audio path at all
    return {"input_features": torch.cat(feats), "input_features_mask": torch.cat(
        [s.input_features_mask for s in samples if s.input_features.shape[0]])}


def packed_tokens(lengths: list[int], shared_prefix: int = 0) -> int:
    """Tokens a packed row of samples of these lengths holds, their first ``shared_prefix`` tokens once."""
    return sum(lengths) - shared_prefix * max(len(lengths) - 1, 0)


def collate_packed(samples: list[TrainSample], budget: int, pad_id: int, *, shared_prefix: int = 0) -> dict:
    """Pack `samples` (in the given order) into one row of `budget` tokens; see the module docstring.

    Returns input_ids, labels, position_ids (1, budget) int64; cu_seqlens (n + 1,) int32, with a final
    boundary at `budget` when there is padding; input_features / input_features_mask when any sample
    has audio. Pass the dict straight to `AFNext.forward`.

    ``shared_prefix`` = L > 0 holds the samples' common first L tokens once, as the row's first segment,
    followed by each sample's tokens from L on (positions L, L + 1, ...); the row then needs the
    ``sdpa_shared_prefix`` attention backend and ``batch["shared_prefix"]`` says so
    (``afnext.train.prefix_sharing`` says which L are allowed).
    """
    lengths = [len(s) for s in samples]
    if any(n == 0 for n in lengths):
        raise ValueError("cannot pack an empty sample")
    if shared_prefix:
        head = samples[0].input_ids[:shared_prefix]
        if any(n <= shared_prefix or not torch.equal(s.input_ids[:shared_prefix], head) for s, n in zip(samples, lengths)):
            raise ValueError(f"the samples do not all start with the same {shared_prefix} tokens and go on past them")
    total = packed_tokens(lengths, shared_prefix)
    if total > budget:
        raise ValueError(f"{len(samples)} samples hold {total} tokens, more than the budget {budget}")
    input_ids = torch.full((1, budget), pad_id, dtype=torch.long)
    labels = torch.full((1, budget), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((1, budget), dtype=torch.long)
    bounds, start = [0], 0
    if shared_prefix:
        input_ids[0, :shared_prefix] = samples[0].input_ids[:shared_prefix]
        position_ids[0, :shared_prefix] = torch.arange(shared_prefix)
        start = shared_prefix
        bounds.append(start)
    for s, n in zip(samples, lengths):
        k = n - shared_prefix
        input_ids[0, start : start + k] = s.input_ids[shared_prefix:]
        labels[0, start : start + k] = s.labels[shared_prefix:]
        labels[0, start] = IGNORE_INDEX
        position_ids[0, start : start + k] = torch.arange(shared_prefix, n)
        start += k
        bounds.append(start)
    if start < budget:
        # Padding is a segment of its own: it attends only to itself (finite rows, no NaN) and nothing
        # attends to it.
        position_ids[0, start:] = torch.arange(budget - start)
        bounds.append(budget)
    out = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids,
           "cu_seqlens": torch.tensor(bounds, dtype=torch.int32), **_audio(samples)}
    if shared_prefix:
        out["shared_prefix"] = shared_prefix
    return out


def collate_padded(samples: list[TrainSample], pad_id: int, padding_side: str = "right") -> dict:
    """An ordinary padded batch: input_ids, attention_mask, labels, position_ids (B, T_max), plus audio.

    position_ids count each row's real tokens from 0 (so left padding computes what the row computes
    alone, unlike the reference forward, which counts the padding too); with right padding they are
    the plain 0..T-1 the model would use anyway.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not samples:
        raise ValueError("collate_padded needs at least one sample")
    width = max(len(s) for s in samples)
    b = len(samples)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    labels = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((b, width), dtype=torch.long)
    position_ids = torch.zeros((b, width), dtype=torch.long)
    for r, s in enumerate(samples):
        n = len(s)
        sl = slice(width - n, width) if padding_side == "left" else slice(0, n)
        input_ids[r, sl], labels[r, sl], attention_mask[r, sl] = s.input_ids, s.labels, 1
        position_ids[r, sl] = torch.arange(n)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "position_ids": position_ids, **_audio(samples)}


# --- dataset statistics -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DurationSummary:
    count: int
    total_s: float
    mean_s: float
    p50_s: float
    p95_s: float
    max_s: float


def summarize_durations(seconds: list[float]) -> DurationSummary:
    xs = sorted(float(x) for x in seconds)
    if not xs:
        return DurationSummary(0, 0.0, 0.0, 0.0, 0.0, 0.0)

    def pct(p):  # nearest-rank percentile: always an observed value
        return xs[max(0, math.ceil(p / 100 * len(xs)) - 1)]

    return DurationSummary(len(xs), sum(xs), sum(xs) / len(xs), pct(50), pct(95), xs[-1])


@dataclass(frozen=True)
class FamilyStats:
    samples: int
    tokens: int
    label_tokens: int
    max_tokens: int
    audio: DurationSummary  # per sample: total audio seconds
    truncated: int


def family_stats(samples) -> dict[str, FamilyStats]:
    """Per-family sample counts, token totals and audio-duration summaries (family None -> "unknown"),
    sorted by family name."""
    groups: dict[str, list[TrainSample]] = defaultdict(list)
    for s in samples:
        groups[s.family or "unknown"].append(s)
    out = {}
    for fam in sorted(groups):
        ss = groups[fam]
        out[fam] = FamilyStats(
            samples=len(ss), tokens=sum(len(s) for s in ss), label_tokens=sum(s.n_label_tokens for s in ss),
            max_tokens=max(len(s) for s in ss), audio=summarize_durations([s.total_audio_seconds for s in ss]),
            truncated=sum(bool(s.truncated) for s in ss))
    return out
