"""Hybrid sequence parallelism for AF-Next training: shard the fused audio+text sequence, attend across ranks.

The model is not edited. Its attention goes through `afnext.model.attention.attend`; inside
`sequence_parallel(groups)` (or `use_backend("ulysses_ring")` after `register_sp_backend(groups)`)
every causal call becomes Ulysses all-to-all (sequence shard -> head shard, inside a node) around ring
attention (KV blocks passed between nodes), and everything else in the decoder (norms, MLPs, RoPE
with the given position_ids) is token-local and simply runs on the shard.

Where the sequence is cut. Audio and text become one sequence only at the splice (`<sound>`
placeholders replaced by audio embeddings), so sharding happens *after* it, on token indices:
`shard_sequence` decides which global tokens each rank holds; the local embeddings are built from the
local token ids plus the audio rows of the local `<sound>` slots.

The encoder. It runs on whole 30-s windows (its attention is bidirectional within a window and its
positions and RoTE are per window), so windows are never split. Each SP rank encodes a contiguous
share of the windows (W/P of them) and the adapter outputs are all-gathered so that every rank can
fill its own slots. The alternative, every rank encoding every window, needs no communication but
repeats the encoder P times: at 128K context the encoder (0.6 B parameters over up to 45,000 audio
tokens) costs about 7 % of the decoder's FLOPs, so with P = 128 a replicated encoder would cost each
rank ~8x its share of decoder work. The gather is differentiable: its backward all-reduces the
embedding gradients over the SP group (each rank's loss touches only the rows spliced into its
shard) and hands each rank the rows of its own windows. A rank with no window takes part in the
collectives with an empty tensor, and (for FSDP, whose per-layer collectives every rank must join)
runs the encoder on a silent window times zero.

Token order (zigzag + Ulysses). The (padded) sequence of length L is cut into 2R chunks; ring rank r
holds chunks r and 2R-1-r (balanced causal work), and that ring shard is cut into U contiguous
pieces, one per Ulysses rank. The Ulysses all-to-all concatenates the pieces in rank order, which
rebuilds exactly the ring shard, so ring attention sees the chunk layout `zigzag_chunks` describes.
Position ids are sharded with their tokens, so RoPE rotates each token by its true position.

Labels and loss. Labels are shifted *before* sharding: `targets[i] = labels[i + 1]` on the whole
sequence, so the last token of a shard still predicts the first token of the next shard (which
lives on another rank). Each rank's loss is its local cross-entropy SUM divided by the GLOBAL number
of target tokens (counted on the full batch before sharding, no communication), so the SP ranks'
losses add up to exactly the token-mean loss of the unsharded step. `sp_forward_loss` returns a
tensor whose value is that global loss (one scalar all-reduce, for logging) but whose gradient is
the local part only.

Gradients. After backward each rank holds a partial gradient (its tokens' share; for the encoder,
its windows' share). The true gradient is their SUM over the SP group: `allreduce_sp_grads` does it
for plain use. Composing with data parallelism: DP replicas see different sequences and are
averaged. With DDP or FSDP built over the whole dp x sp world (the usual setup: FSDP shards
parameters across all ranks, and its reduce-scatter divides by the world size dp x sp), the
average over the world equals (1 / sp) x (DP mean of SP sums), so multiply the loss by `sp_size`
before backward (`loss * groups.layout.sp_size`), or equivalently give FSDP a gradient divide factor
of dp; do not also call `allreduce_sp_grads`. The DP mean weights replicas equally, not by token
count, as in any DP training.

Padding. L is padded to a multiple of 2 x R x U (every chunk and piece equal). Pad tokens go at the
END of each row with targets IGNORE_INDEX: under causal attention no real query ever sees a later
key, so real tokens compute exactly what they compute unpadded; pad queries contribute neither loss
nor gradient (their dO is zero, which makes their dS rows exactly zero). With cu_seqlens the padding
becomes a packed sequence of its own; with an attention_mask it is marked as padding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from afnext.model.attention import AttentionMask, register_backend, sdpa_backend, use_backend
from afnext.parallel.groups import SPGroups, SPLayout, comm_stats, tensor_bytes
from afnext.parallel.ring import GlobalMask, RingSpec, ring_attention, zigzag_chunks
from afnext.parallel.ulysses import heads_to_seq, qkv_seq_to_heads

IGNORE_INDEX = -100
SP_BACKEND = "ulysses_ring"


# ---- which tokens a rank holds -----------------------------------------------------------------------
def _layout_of(layout: SPLayout | SPGroups) -> SPLayout:
    return layout.layout if isinstance(layout, SPGroups) else layout


def padded_length(seq_len: int, layout: SPLayout | SPGroups) -> int:
    """Smallest length >= seq_len that splits into 2 x ring x ulysses equal pieces."""
    lay = _layout_of(layout)
    unit = 2 * lay.ring * lay.ulysses
    return -(-seq_len // unit) * unit


def shard_order(seq_len: int, layout: SPLayout | SPGroups) -> torch.Tensor:
    """(L,) global token indices in SP-rank order: rank s holds entries [s*L/P, (s+1)*L/P).

    seq_len must already be padded (`padded_length`).
    """
    lay = _layout_of(layout)
    chunks = zigzag_chunks(seq_len, lay.ring)
    return torch.cat([torch.arange(a, b) for ranges in chunks for a, b in ranges])


def token_index(seq_len: int, layout: SPLayout | SPGroups) -> torch.Tensor:
    """(L/P,) global indices of this rank's tokens, in local order."""
    lay = _layout_of(layout)
    per_rank = seq_len // lay.sp_size
    return shard_order(seq_len, lay)[lay.sp_rank * per_rank : (lay.sp_rank + 1) * per_rank]


@dataclass
class ShardedBatch:
    """One rank's part of a batch. Shapes: (B, T) with T = padded_len / sp_size, except where noted.

    input_ids, targets (labels already shifted: targets[i] = labels[i+1]), position_ids: local.
    audio_index: ordinal of each local `<sound>` slot among all audio embeddings (row-major over
      the batch, as the model's splice), -1 elsewhere.
    cu_seqlens: global boundaries over the padded length (padding a segment of its own), or None.
    attention_mask: global (B, padded_len), or None when every token is real or padding is only at
      the end of an unmasked batch (causal attention never looks ahead).
    index: (T,) global token index of each local position. num_targets: global count of targets.
    num_audio_slots: global count of `<sound>` slots (checked against the audio embeddings).
    """

    input_ids: torch.Tensor
    targets: torch.Tensor
    position_ids: torch.Tensor
    audio_index: torch.Tensor | None
    cu_seqlens: torch.Tensor | None
    attention_mask: torch.Tensor | None
    index: torch.Tensor
    seq_len: int
    padded_len: int
    num_targets: int
    num_audio_slots: int


def _pad_right(x: torch.Tensor, length: int, value) -> torch.Tensor:
    if x.shape[1] == length:
        return x
    return torch.cat([x, x.new_full((x.shape[0], length - x.shape[1]), value)], dim=1)


def shard_sequence(batch: dict, layout: SPLayout | SPGroups, *, audio_token_id: int | None = None,
                   pad_id: int = 0) -> ShardedBatch:
    """Shift labels, pad to a multiple of 2RU, and take this rank's tokens (pure index work, no comms).

    batch: input_ids (B, L) and optionally labels, position_ids, cu_seqlens (global, B == 1),
    attention_mask (B, L), as the processor and `afnext.data.packing` produce them.
    """
    lay = _layout_of(layout)
    ids = batch["input_ids"]
    b, length = ids.shape
    total = padded_length(length, lay)
    labels = batch.get("labels")
    if labels is None:
        targets = torch.full_like(ids, IGNORE_INDEX)
    else:
        targets = torch.cat([labels[:, 1:], labels.new_full((b, 1), IGNORE_INDEX)], dim=1)
    positions = batch.get("position_ids")
    if positions is None:  # the model's own default: 0..L-1 on every row
        positions = torch.arange(length)[None].expand(b, length)
    # Pad positions continue counting so RoPE stays well defined; they never reach a real token.
    positions = torch.cat([positions, torch.arange(length, total)[None].expand(b, total - length).to(positions)], dim=1)
    cu = batch.get("cu_seqlens")
    if cu is not None:
        if b != 1:
            raise ValueError(f"cu_seqlens describes a packed row (batch size 1), got batch size {b}")
        cu = cu.to(torch.int32)
        if int(cu[-1]) < total:
            cu = torch.cat([cu, cu.new_tensor([total])])
    attn = batch.get("attention_mask")
    if attn is not None:
        attn = None if bool(attn.bool().all()) else _pad_right(attn.long(), total, 0)
    num_audio = 0
    audio_index = None
    if audio_token_id is not None:
        slots = ids == audio_token_id
        num_audio = int(slots.sum())
        audio_index = torch.where(slots, slots.flatten().cumsum(0).view(b, length) - 1, -1)
        audio_index = _pad_right(audio_index, total, -1)
    index = token_index(total, lay)
    return ShardedBatch(
        input_ids=_pad_right(ids, total, pad_id)[:, index],
        targets=_pad_right(targets, total, IGNORE_INDEX)[:, index],
        position_ids=positions[:, index],
        audio_index=None if audio_index is None else audio_index[:, index],
        cu_seqlens=cu,
        attention_mask=attn,
        index=index,
        seq_len=length,
        padded_len=total,
        num_targets=int((targets != IGNORE_INDEX).sum()),
        num_audio_slots=num_audio,
    )


# ---- the attention backend ---------------------------------------------------------------------------
def sp_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask, scale: float | None,
                 groups: SPGroups, kernels=None) -> torch.Tensor:
    """Causal attention over the SP group's whole sequence; q (B, Hq, T, D), k/v (B, Hkv, T, D) local shards.

    Non-causal calls (the audio encoder, whose windows are never sharded) run locally with SDPA.
    cu_seqlens and key_padding, if present, are in global coordinates (the padded length).
    """
    if not mask.causal:
        return sdpa_backend(q, k, v, mask, scale)
    lay = groups.layout
    if mask.q_offset or k.shape[2] != q.shape[2]:
        raise RuntimeError("sequence-parallel attention shards training/prefill sequences; it does not take a KV cache")
    length = q.shape[2] * lay.sp_size
    kp = mask.key_padding
    if kp is not None and kp.shape[1] != length:
        raise ValueError(f"under sequence parallelism key_padding must cover the global sequence ({length} tokens), "
                         f"got {kp.shape[1]}; pass the full attention_mask (ShardedBatch.attention_mask)")
    gmask = GlobalMask(causal=True, length=length, cu_seqlens=mask.cu_seqlens, key_padding=kp)
    q, k, v = qkv_seq_to_heads(q, k, v, groups.ulysses_group, lay.ulysses)
    spec = RingSpec(rank=lay.ring_rank, size=lay.ring, chunks=zigzag_chunks(length, lay.ring), mask=gmask,
                    group=groups.ring_group, next_rank=lay.ring_next(), prev_rank=lay.ring_prev(), kernels=kernels)
    out = ring_attention(q, k, v, spec, scale)
    return heads_to_seq(out, groups.ulysses_group, lay.ulysses)


_registered: list[tuple[SPGroups, object]] = []  # (groups, kernels); the last one is active


def _dispatch(q, k, v, mask, scale=None):
    if not _registered:
        raise RuntimeError(f"the {SP_BACKEND!r} attention backend has no process groups: call register_sp_backend(groups) "
                           "or use the sequence_parallel(groups) context manager")
    groups, kernels = _registered[-1]
    return sp_attention(q, k, v, mask, scale, groups, kernels)


register_backend(SP_BACKEND, _dispatch)


def register_sp_backend(groups: SPGroups, kernels=None) -> None:
    """Bind the "ulysses_ring" backend to these groups, so `use_backend("ulysses_ring")` runs SP."""
    _registered.append((groups, kernels))


@contextlib.contextmanager
def sequence_parallel(groups: SPGroups, kernels=None) -> Iterator[None]:
    """Run attention sequence-parallel over `groups` inside the block (and restore what was before).

    The backward pass must run inside the block too when layers are recomputed (activation
    checkpointing); `sp_forward_loss` arranges that by itself.
    """
    _registered.append((groups, kernels))
    try:
        with use_backend(SP_BACKEND):
            yield
    finally:
        _registered.pop()


# ---- audio: each rank encodes a share of the windows ----------------------------------------------------
class _GatherRows(torch.autograd.Function):
    """Concatenate every rank's rows (rank order); backward: sum the gradient over ranks, keep own rows."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, counts: list[int], rank: int, group):
        ctx.counts, ctx.rank, ctx.group = counts, rank, group
        width = max(counts)
        buf = local.new_zeros(width, local.shape[1])
        buf[: local.shape[0]] = local
        parts = [torch.empty_like(buf) for _ in counts]
        dist.all_gather(parts, buf, group=group)
        comm_stats.add("audio", "fwd", tensor_bytes(buf) * (len(counts) - 1))
        return torch.cat([p[:n] for p, n in zip(parts, counts)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        comm_stats.add("audio", "bwd", 2 * tensor_bytes(grad) * (len(ctx.counts) - 1) // len(ctx.counts))
        start = sum(ctx.counts[: ctx.rank])
        return grad[start : start + ctx.counts[ctx.rank]], None, None, None


def window_share(num_windows: int, layout: SPLayout | SPGroups) -> tuple[int, int]:
    """[lo, hi) of the windows this SP rank encodes (contiguous, sizes differ by at most one)."""
    lay = _layout_of(layout)
    p, s = lay.sp_size, lay.sp_rank
    return s * num_windows // p, (s + 1) * num_windows // p


def encode_audio_sp(model, input_features: torch.Tensor, input_features_mask: torch.Tensor | None,
                    input_ids: torch.Tensor, groups: SPGroups, *, run_idle_encoder: bool = True) -> torch.Tensor:
    """All audio embeddings (N, llm_hidden), the same on every SP rank, each rank encoding W/P windows.

    Mirrors `AFNext.encode_audio` (encoder -> RoTE -> adapter -> valid rows) on a window subset; RoTE's
    window indices come from the whole prompt, as they must. With fewer windows than SP ranks, the
    idle ranks run the encoder on a silent window times zero (`run_idle_encoder`, needed under FSDP,
    where skipping a unit on one rank hangs the others; without FSDP it can be turned off).
    """
    from afnext.model.encoder import tokens_from_mel_frames
    from afnext.model.rote import window_index_per_row

    lay = groups.layout
    dev = model.device
    if input_features_mask is None:
        input_features_mask = torch.ones(input_features.shape[0], input_features.shape[-1], dtype=torch.long)
    fmask = input_features_mask.to(dev)
    tokens_per_row = tokens_from_mel_frames(fmask.sum(-1).long())
    window_index = None
    if model.rote is not None:
        window_index = window_index_per_row(input_ids.to(dev), model.config.audio_token_id, tokens_per_row)
    total = input_features.shape[0]
    p = lay.sp_size
    shares = [(s * total // p, (s + 1) * total // p) for s in range(p)]  # what window_share gives rank s
    counts = [int(tokens_per_row[lo:hi].sum()) for lo, hi in shares]
    lo, hi = shares[lay.sp_rank]
    pieces = []
    step = max(1, int(model.encoder_batch_windows))
    for a in range(lo, hi, step):
        b = min(hi, a + step)
        hidden = model.encoder(input_features[a:b].to(dev, model.dtype), fmask[a:b])
        if model.rote is not None:
            hidden = model.rote(hidden, window_index[a:b])
        embeds = model.adapter(hidden)
        valid = torch.arange(embeds.shape[1], device=dev)[None, :] < tokens_per_row[a:b, None]
        pieces.append(embeds[valid])
    width = model.config.llm.hidden_size
    trains = torch.is_grad_enabled() and any(p.requires_grad for m in (model.encoder, model.adapter) for p in m.parameters())
    if pieces:
        local = torch.cat(pieces)
    else:
        # Same graph on every rank: a rank without windows still joins the backward all-reduce.
        local = torch.zeros(0, width, device=dev, dtype=model.dtype, requires_grad=trains)
        if run_idle_encoder and total:
            # Under FSDP every rank must run every encoder/adapter unit (their all-gathers and
            # reduce-scatters are collective), so an idle rank encodes one silent window and adds it
            # times zero: the same collectives, zero gradient, nothing in the output.
            silent = torch.zeros_like(input_features[:1]).to(dev, model.dtype)
            hidden = model.encoder(silent, torch.ones_like(fmask[:1]))
            if model.rote is not None:
                hidden = model.rote(hidden, torch.zeros(1, dtype=torch.long, device=dev))
            local = local + 0 * model.adapter(hidden).sum()
    if lay.sp_size == 1:
        return local
    return _GatherRows.apply(local, counts, lay.sp_rank, groups.sp_group)


def embed_shard(model, shard: ShardedBatch, audio_embeds: torch.Tensor | None) -> torch.Tensor:
    """Local input embeddings (B, T, H): token embeddings with the local `<sound>` slots spliced in."""
    embeds = model.llm.embed_tokens(shard.input_ids.to(model.device))
    n_audio = 0 if audio_embeds is None else audio_embeds.shape[0]
    if shard.num_audio_slots != n_audio:
        raise ValueError(f"audio placeholders and audio features do not match: {shard.num_audio_slots} <sound> tokens, "
                         f"{n_audio} audio embeddings")
    if n_audio:
        idx = shard.audio_index.to(model.device)
        rows = audio_embeds[idx.clamp(min=0)].to(embeds.dtype)
        embeds = torch.where((idx >= 0)[..., None], rows, embeds)
    return embeds


# ---- a training step -------------------------------------------------------------------------------------
def sp_forward_loss(model, batch: dict, groups: SPGroups, kernels=None) -> torch.Tensor:
    """Token-mean next-token loss of `batch` computed sequence-parallel over `groups`.

    Every SP rank passes the same full batch. The returned scalar's value is the global loss (the
    same on every rank); its gradient is this rank's partial gradient (sum over the SP group with
    `allreduce_sp_grads`, or see the module docstring for FSDP/DP).
    """
    shard = shard_sequence(batch, groups, audio_token_id=model.config.audio_token_id,
                           pad_id=model.config.llm.pad_token_id or 0)
    audio = None
    if batch.get("input_features") is not None:
        audio = encode_audio_sp(model, batch["input_features"], batch.get("input_features_mask"), batch["input_ids"], groups)
    embeds = embed_shard(model, shard, audio)
    dev = model.device
    with sequence_parallel(groups, kernels):
        out = model(inputs_embeds=embeds, position_ids=shard.position_ids.to(dev),
                    attention_mask=None if shard.attention_mask is None else shard.attention_mask.to(dev),
                    cu_seqlens=None if shard.cu_seqlens is None else shard.cu_seqlens.to(dev))
    logits = out.logits.float()
    local = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), shard.targets.to(dev).reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum") / max(shard.num_targets, 1)
    if local.requires_grad:
        _keep_sp_during_backward(local, groups, kernels)
    total = local.detach().clone()
    if groups.layout.sp_size > 1:
        dist.all_reduce(total, group=groups.sp_group)
    return local + (total - local.detach())


def _keep_sp_during_backward(t: torch.Tensor, groups: SPGroups, kernels) -> None:
    """Re-enter `sequence_parallel(groups)` for the whole backward pass that starts at `t`.

    Activation checkpointing recomputes each decoder layer inside backward, i.e. after the forward's
    `with sequence_parallel(...)` has exited, and `attend` would then pick the default backend: a
    wrong (local-only) attention. A hook on `t` runs when backward reaches it, before any layer is
    recomputed; it re-enters the context and queues its exit for the end of the backward pass (the
    autograd engine's final callback, as DDP uses for its gradient buckets).
    """

    def enter(grad):
        ctx = sequence_parallel(groups, kernels)
        ctx.__enter__()
        torch.autograd.Variable._execution_engine.queue_callback(lambda: ctx.__exit__(None, None, None))
        return grad

    t.register_hook(enter)


def allreduce_sp_grads(model, groups: SPGroups) -> None:
    """Sum parameter gradients over the SP group (one flat buffer); missing gradients count as zero."""
    if groups.layout.sp_size == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=groups.sp_group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
