"""Parallelism applied from outside the model.

Sequence parallelism (hybrid Ulysses x Ring, see `sequence.py`):

    groups = init_sp_groups(ulysses=8, ring=16)          # after dist.init_process_group
    loss = sp_forward_loss(model, batch, groups)         # every SP rank passes the same batch
    loss.backward(); allreduce_sp_grads(model, groups)   # or let FSDP reduce, see sequence.py

`plan.py` estimates memory and traffic for a layout (`afnext plan`).
"""

from afnext.parallel.groups import CommStats, SPConfigError, SPGroups, SPLayout, comm_stats, init_sp_groups
from afnext.parallel.ring import GlobalMask, RingSpec, ring_attention, zigzag_chunks
from afnext.parallel.sequence import (
    SP_BACKEND,
    ShardedBatch,
    allreduce_sp_grads,
    embed_shard,
    encode_audio_sp,
    padded_length,
    register_sp_backend,
    sequence_parallel,
    shard_order,
    shard_sequence,
    sp_attention,
    sp_forward_loss,
    token_index,
)
from afnext.parallel.ulysses import heads_to_seq, kv_repeat_factor, qkv_seq_to_heads, seq_to_heads

__all__ = [
    "CommStats", "GlobalMask", "RingSpec", "SPConfigError", "SPGroups", "SPLayout", "SP_BACKEND", "ShardedBatch",
    "allreduce_sp_grads", "comm_stats", "embed_shard", "encode_audio_sp", "heads_to_seq", "init_sp_groups",
    "kv_repeat_factor", "padded_length", "qkv_seq_to_heads", "register_sp_backend", "ring_attention",
    "seq_to_heads", "sequence_parallel", "shard_order", "shard_sequence", "sp_attention", "sp_forward_loss",
    "token_index", "zigzag_chunks",
]
