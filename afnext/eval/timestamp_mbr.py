"""The minimum-Bayes-risk reading of a one-timestamp answer: the model's probability of every candidate
timestamp, and the one that minimises the expected absolute error (the distribution's median).

Greedy decoding writes a timestamp one digit token at a time, each the likeliest given those before it,
so the first digit is chosen before the model has said anything about the rest: a model that puts 40 %
on 19.x s and 35 % on 20.x s answers 1x s and may then pick a units digit far from either. Scoring every
candidate instead gives the model's full belief over the timeline, and under an absolute-error loss (the
onset figure's own) the best single answer is that belief's median (MBR decoding; Kumar & Byrne, 2004).

The candidates share most of their tokens ("23.4" and "23.7" differ in the last), so they are scored as a
token trie over one KV cache: the prompt (audio included) is encoded and prefilled once, then each trie
level feeds one token per node, its rows forked from their parents' cache rows. For 0.0-60.0 s at 0.1 s
that is 1 + 10 + 61 + 51 single-token rows instead of 601 full sequences.
"""

from __future__ import annotations

import copy
import math

import torch

from afnext.model.llm import KVCache


def onset_candidates(max_s: float, grid_s: float = 0.1) -> list[tuple[float, str]]:
    """(value, text) for every timestamp 0 .. max_s on the grid, written as the onset answers are
    ("23.4"; the unit suffix that follows every one of them carries no information)."""
    if not (math.isfinite(max_s) and max_s >= 0 and grid_s > 0):
        raise ValueError(f"need max_s >= 0 and grid_s > 0, got {max_s}, {grid_s}")
    n = int(math.floor(max_s / grid_s + 1e-9))
    decimals = max(0, -int(math.floor(math.log10(grid_s) + 1e-9)))
    return [(round(i * grid_s, decimals), f"{i * grid_s:.{decimals}f}") for i in range(n + 1)]


def _fork(cache: KVCache, rows: torch.Tensor) -> KVCache:
    out = copy.copy(cache)
    out.k = [k[rows] for k in cache.k]
    out.v = [v[rows] for v in cache.v]
    return out


@torch.no_grad()
def sequence_logprobs(model, inputs: dict, sequences: list[list[int]]) -> torch.Tensor:
    """log P(sequence | prompt) for each token sequence, continuing the one prompt in ``inputs`` (a
    processor output of batch 1). The sequences must be prefix-free (none a prefix of another), else
    their probabilities would not be of exclusive answers."""
    if inputs["input_ids"].shape[0] != 1:
        raise ValueError(f"one prompt at a time, got a batch of {inputs['input_ids'].shape[0]}")
    seqs = [tuple(s) for s in sequences]
    if not seqs or any(not s for s in seqs):
        raise ValueError("need at least one sequence, each of at least one token")
    prefixes = {s[:k] for s in seqs for k in range(1, len(s))}
    clash = next((s for s in seqs if s in prefixes), None)
    if clash is not None or len(set(seqs)) != len(seqs):
        raise ValueError(f"the sequences are not prefix-free (e.g. {list(clash or seqs[0])})")
    dev = model.device
    ids = inputs["input_ids"].to(dev)
    t = ids.shape[1]
    audio = None
    if inputs.get("input_features") is not None:
        audio = model.encode_audio(inputs["input_features"], inputs["input_features_mask"], ids)
    depth = max(len(s) for s in seqs)
    cache = KVCache(model.config.llm, 1, t + depth, model.dtype, dev)
    hidden = model.llm(model.embed_inputs(ids, audio), torch.arange(t, device=dev)[None], None, cache)
    logp = {(): model.lm_head(hidden[:, -1]).float().log_softmax(-1)[0]}  # node (token prefix) -> next-token log-probs
    row = {(): 0}  # node -> its row in the current level's cache
    for k in range(1, depth):
        nodes = sorted(p for p in prefixes if len(p) == k)
        if not nodes:
            break
        cache = _fork(cache, torch.tensor([row[p[:-1]] for p in nodes], device=dev))
        toks = torch.tensor([p[-1] for p in nodes], device=dev)[:, None]
        pos = torch.full((len(nodes), 1), t + k - 1, device=dev)
        hidden = model.llm(model.llm.embed_tokens(toks), pos, None, cache)
        lp = model.lm_head(hidden[:, -1]).float().log_softmax(-1)
        row = {p: i for i, p in enumerate(nodes)}
        logp.update({p: lp[i] for i, p in enumerate(nodes)})
    return torch.stack([sum(logp[s[:i]][s[i]] for i in range(len(s))) for s in seqs])


def weighted_median(values: list[float], logprobs: torch.Tensor) -> float:
    """The value minimising the expected absolute error under the (renormalised) probabilities."""
    order = sorted(range(len(values)), key=values.__getitem__)
    p = logprobs.double()[order].softmax(0)
    i = int(torch.searchsorted(p.cumsum(0), torch.tensor(0.5, dtype=torch.float64)))
    return values[order[min(i, len(order) - 1)]]


def median_timestamp(model, tokenizer, inputs: dict, max_s: float, grid_s: float = 0.1) -> float:
    """The MBR (median) timestamp answer to the one prompt in ``inputs``, among 0 .. max_s."""
    cands = onset_candidates(max_s, grid_s)
    seqs = [tokenizer.encode(text) for _, text in cands]
    return weighted_median([v for v, _ in cands], sequence_logprobs(model, inputs, seqs))
