"""Shared-prefix packing: the samples of a packed row that start with the same tokens compute them once.

Every training conversation opens with the chat template's system turn (AF-Next's default is 89 tokens
of the nano tokenizer, half of a short transcription sample). Under causal attention a token's hidden
states depend only on the tokens before it, so a leading run of identical token ids at identical
positions has identical hidden states in every sample: the row can hold that run once, and each
sample's remaining tokens attend to it as if it were their own. Forward values are unchanged and the
gradient reaching the shared run is the sum of what each copy would receive, so the step is the same
(to float rounding; tested against the unshared row).

What may be shared (`shared_prefix_length`): the longest common leading run of the row's samples that
holds no audio placeholder (their embeddings come from each sample's audio, not from the id) and no
labelled position (a target predicted inside the shared run would count once instead of once per
sample), and that leaves every sample at least one token of its own.

Layout (`afnext.data.packing.collate_packed(..., shared_prefix=L)`): the row is the run (positions
0..L-1) and then each sample's tokens after it, numbered from L as they would be alone; the run is the
first segment of `cu_seqlens`. The attention backend registered here, ``sdpa_shared_prefix``, lets
every later segment see that first segment; the model code is unchanged (the trainer swaps the backend
in with `afnext.model.attention.use_backend`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from afnext.data.tokenize import TrainSample
from afnext.model.afnext import IGNORE_INDEX
from afnext.model.attention import AttentionMask, _segments, register_backend, sdpa_backend

BACKEND = "sdpa_shared_prefix"


def shared_prefix_length(samples: list[TrainSample], audio_token_id: int) -> int:
    """Tokens the packed row of ``samples`` can hold once (0 when fewer than two samples or nothing is common)."""
    if len(samples) < 2:
        return 0
    first = samples[0].input_ids
    limit = min(len(s) for s in samples) - 1  # every sample keeps at least one token of its own
    for s in samples:
        ids = s.input_ids[:limit]
        stop = ids != first[: len(ids)]
        stop |= ids == audio_token_id
        # the logit at p - 1 predicts label p: the run must end before the position preceding a target
        labelled = (s.labels[1 : len(ids) + 1] != IGNORE_INDEX)
        stop[: labelled.numel()] |= labelled
        hits = torch.nonzero(stop)
        limit = min(limit, int(hits[0]) if hits.numel() else len(ids))
        if limit <= 0:
            return 0
    return limit


def sdpa_shared_prefix_backend(q, k, v, mask: AttentionMask, scale=None):
    """SDPA where the first packed segment is a prefix every later segment also attends to."""
    t, s = q.shape[-2], k.shape[-2]
    if not (mask.cu_seqlens is not None and mask.causal and mask.key_padding is None and mask.q_offset == 0
            and t == s and q.shape[0] == 1):
        return sdpa_backend(q, k, v, mask, scale)  # the encoder's windows, generation: nothing is shared
    gqa = q.shape[1] != k.shape[1]
    sizes = [b - a for a, b in _segments(mask.cu_seqlens, t)]
    qs, ks, vs = q.split(sizes, dim=2), k.split(sizes, dim=2), v.split(sizes, dim=2)
    prefix = sizes[0]
    out = [F.scaled_dot_product_attention(qs[0], ks[0], vs[0], is_causal=True, scale=scale, enable_gqa=gqa)]
    for qi, ki, vi in zip(qs[1:], ks[1:], vs[1:]):
        n = qi.shape[2]
        # query j of the segment sees the whole prefix and its own keys 0..j
        allowed = torch.ones(n, prefix + n, dtype=torch.bool, device=q.device).tril(diagonal=prefix)
        out.append(F.scaled_dot_product_attention(qi, torch.cat([ks[0], ki], dim=2), torch.cat([vs[0], vi], dim=2),
                                                  attn_mask=allowed, scale=scale, enable_gqa=gqa))
    return torch.cat(out, dim=2)


register_backend(BACKEND, sdpa_shared_prefix_backend)
