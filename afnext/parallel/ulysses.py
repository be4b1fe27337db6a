"""DeepSpeed-Ulysses: an all-to-all that trades the sequence shard for a head shard.

Before attention each of the U ranks of a Ulysses group holds T tokens of every head, (B, H, T, D).
One all-to-all gives each rank all U*T tokens of H/U heads, (B, H/U, U*T, D): attention is then an
ordinary (here: ring) attention over the longer sequence, with no further communication inside the
group, and a second all-to-all brings the output back to (B, H, T, D). The U*T tokens come out in
Ulysses-rank order, i.e. in the order of the shards the ranks held, so whatever global token order
the shards had (zigzag, see `sequence.py`) is preserved.

Autograd. `_AllToAll` moves slice j of a (U, ...) tensor to rank j and stacks what arrives by source
rank. That map is its own adjoint (rank j's slice i returns to rank i's slice j), so its backward is
the same all-to-all applied to the gradient. Everything else (the head/sequence rearrangements) is
plain differentiable reshaping that autograd handles.

Grouped-query attention. Each rank must hold the key/value heads its query heads use. With
Hkv divisible by U each rank takes Hkv/U KV heads (and the matching Hq/U query heads, since query
heads are grouped contiguously). With Hkv < U (AF-Next 7B: 4 KV heads, Ulysses 8) each KV head is
repeated U/Hkv times before the all-to-all so every rank receives exactly one, the one its
contiguous block of Hq/U query heads shares; the repetition's backward sums the copies' gradients.
Anything else (Hq not divisible by U; Hkv and U with neither dividing the other) is refused with the
numbers named, rather than padded silently.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from afnext.parallel.groups import SPConfigError, comm_stats, tensor_bytes


def kv_repeat_factor(num_heads: int, num_kv_heads: int, ulysses: int) -> int:
    """How many times each KV head is repeated so that `ulysses` ranks can split heads; raises if impossible."""
    if num_kv_heads < 1 or num_heads % num_kv_heads:
        raise SPConfigError(f"{num_heads} query heads are not a multiple of {num_kv_heads} key/value heads")
    if num_heads % ulysses:
        raise SPConfigError(
            f"Ulysses cannot split {num_heads} query heads over {ulysses} ranks ({num_heads} % {ulysses} = "
            f"{num_heads % ulysses}); choose a ulysses degree that divides {num_heads} and move the rest to ring"
        )
    if num_kv_heads % ulysses == 0:
        return 1
    if ulysses % num_kv_heads == 0:
        return ulysses // num_kv_heads
    raise SPConfigError(
        f"Ulysses cannot split {num_kv_heads} key/value heads over {ulysses} ranks: neither divides the other, "
        f"so no rank layout gives each rank whole KV heads; choose a ulysses degree that divides or is a "
        f"multiple of {num_kv_heads}"
    )


def valid_ulysses_degrees(num_heads: int, num_kv_heads: int, limit: int) -> list[int]:
    """Ulysses degrees up to `limit` that can split these heads."""
    out = []
    for u in range(1, limit + 1):
        try:
            kv_repeat_factor(num_heads, num_kv_heads, u)
        except SPConfigError:
            continue
        out.append(u)
    return out


class _AllToAll(torch.autograd.Function):
    """x (U, ...) -> y (U, ...) with y[i] on rank j = x[j] on rank i. Self-adjoint."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return _all_to_all(x, group, "fwd")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _all_to_all(grad, ctx.group, "bwd"), None


def _all_to_all(x: torch.Tensor, group, phase: str) -> torch.Tensor:
    x = x.contiguous()
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x, group=group)
    u = x.shape[0]
    comm_stats.add("ulysses", phase, tensor_bytes(x) * (u - 1) // u)
    return out


def _to_destinations(x: torch.Tensor, u: int) -> torch.Tensor:
    """(B, H, T, D) -> (U, B, H/U, T, D): slice j holds the heads rank j will own."""
    b, h, t, d = x.shape
    return x.view(b, u, h // u, t, d).transpose(0, 1)


def _from_sources(y: torch.Tensor) -> torch.Tensor:
    """(U, B, h, T, D), slice i = rank i's tokens -> (B, h, U*T, D) in rank order."""
    u, b, h, t, d = y.shape
    return y.permute(1, 2, 0, 3, 4).reshape(b, h, u * t, d)


def seq_to_heads(x: torch.Tensor, group, ulysses: int) -> torch.Tensor:
    """(B, H, T, D) sequence shard, all heads -> (B, H/U, U*T, D) head shard, all of the group's tokens."""
    if ulysses == 1:
        return x
    return _from_sources(_AllToAll.apply(_to_destinations(x, ulysses), group))


def heads_to_seq(y: torch.Tensor, group, ulysses: int) -> torch.Tensor:
    """Inverse of `seq_to_heads`: (B, H/U, U*T, D) -> (B, H, T, D)."""
    if ulysses == 1:
        return y
    b, h, ut, d = y.shape
    t = ut // ulysses
    # Slice j of the send buffer is the j-th sequence piece (rank j's tokens) of my heads; slice i of
    # what comes back is rank i's heads of my tokens (for B == 1 the final reshape is a view).
    back = _AllToAll.apply(y.view(b, h, ulysses, t, d).permute(2, 0, 1, 3, 4), group)
    return back.transpose(0, 1).reshape(b, ulysses * h, t, d)


def qkv_seq_to_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group, ulysses: int):
    """One all-to-all for q, k and v (fewer, larger messages); repeats KV heads when Hkv < U.

    q (B, Hq, T, D), k/v (B, Hkv, T, D) -> q (B, Hq/U, U*T, D), k/v (B, max(Hkv, U)/U, U*T, D).
    """
    hq, hkv = q.shape[1], k.shape[1]
    rep = kv_repeat_factor(hq, hkv, ulysses)
    if ulysses == 1:
        return q, k, v
    if rep > 1:
        # Adjacent copies land on adjacent ranks, which hold adjacent query-head blocks of the same group.
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    hq_l, hkv_l = hq // ulysses, k.shape[1] // ulysses
    # One expression, no named temporaries: the send buffer dies when the all-to-all returns and the
    # receive buffer once it has been rearranged, so at most two q+k+v-sized buffers are alive at once.
    heads = _from_sources(_AllToAll.apply(
        torch.cat([_to_destinations(q, ulysses), _to_destinations(k, ulysses), _to_destinations(v, ulysses)], dim=2),
        group))
    return heads.split([hq_l, hkv_l, hkv_l], dim=1)
