"""Process groups for hybrid sequence parallelism: data x ring x Ulysses.

Rank layout. The world is factored as `dp x ring x ulysses`, Ulysses fastest:

    rank = (dp_rank * ring + ring_rank) * ulysses + ulysses_rank

so a Ulysses group is `ulysses` *contiguous* ranks. Launchers number ranks node by node, so with
`ulysses` dividing the GPUs per node, every Ulysses group lives inside one node and its all-to-all
runs over NVLink. Ring groups are strided (stride `ulysses`): one rank from each of `ring`
consecutive Ulysses groups, i.e. one per node when `ulysses` equals the GPUs per node, so ring
attention's point-to-point traffic is the part that crosses the network. The sequence-parallel (SP)
group of `ulysses * ring` contiguous ranks holds one sequence; the data-parallel group strides over SP
groups (ranks with equal SP coordinates).

`SPLayout` is pure arithmetic (no torch.distributed): tests and the planner use it directly.
`init_sp_groups` creates the torch.distributed groups for a layout (every rank must call it, since
`new_group` is collective). A group of size 1 still exists but the sequence-parallel code never
communicates over it.

Communication accounting. `comm_stats` counts the bytes this process hands to torch.distributed for
sequence parallelism (what it *sends* to other ranks), keyed by (kind, phase); the memory/traffic
bench compares it with the analytic model in `plan.py`.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


class SPConfigError(ValueError):
    """A sequence-parallel layout that cannot be built (sizes that do not divide, heads that do not split...)."""


@dataclass(frozen=True)
class SPLayout:
    """One rank's place in a `dp x ring x ulysses` world.

    ulysses: ranks per Ulysses (all-to-all) group, contiguous, inside a node.
    ring: ranks per ring group (one per Ulysses group of the same SP group), strided by `ulysses`.
    dp: data-parallel replicas, each of which holds a different sequence (batch).
    rank: this process's global rank.
    """

    ulysses: int
    ring: int
    dp: int
    rank: int

    def __post_init__(self):
        for name in ("ulysses", "ring", "dp"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise SPConfigError(f"{name} degree must be a positive integer, got {value!r}")
        if not 0 <= self.rank < self.world_size:
            raise SPConfigError(
                f"rank {self.rank} is outside a world of {self.world_size} "
                f"(dp {self.dp} x ring {self.ring} x ulysses {self.ulysses})"
            )

    @classmethod
    def from_world(cls, world_size: int, rank: int, ulysses: int, ring: int,
                   local_world_size: int | None = None) -> "SPLayout":
        """Derive dp from the world size; check the layout fits (and, if given, fits the node size).

        local_world_size: processes per node; when given, a Ulysses group must not span nodes.
        """
        for name, value in (("ulysses", ulysses), ("ring", ring), ("world size", world_size)):
            if not isinstance(value, int) or value < 1:
                raise SPConfigError(f"{name} must be a positive integer, got {value!r}")
        sp = ulysses * ring
        if world_size % sp:
            raise SPConfigError(
                f"world size {world_size} is not divisible by ulysses x ring = {ulysses} x {ring} = {sp}; "
                f"the world must be dp x ring x ulysses"
            )
        if local_world_size is not None:
            if local_world_size < 1:
                raise SPConfigError(f"local world size must be positive, got {local_world_size}")
            if local_world_size % ulysses:
                raise SPConfigError(
                    f"ulysses degree {ulysses} does not divide the {local_world_size} processes per node: a Ulysses "
                    f"group would span nodes and its all-to-all would cross the network; use a divisor of "
                    f"{local_world_size} and put the rest into ring"
                )
        return cls(ulysses=ulysses, ring=ring, dp=world_size // sp, rank=rank)

    # ---- sizes and coordinates -------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        return self.dp * self.ring * self.ulysses

    @property
    def sp_size(self) -> int:
        return self.ring * self.ulysses

    @property
    def ulysses_rank(self) -> int:
        return self.rank % self.ulysses

    @property
    def ring_rank(self) -> int:
        return (self.rank // self.ulysses) % self.ring

    @property
    def dp_rank(self) -> int:
        return self.rank // self.sp_size

    @property
    def sp_rank(self) -> int:
        """Position inside the SP group; also the index of this rank's sequence shard."""
        return self.ring_rank * self.ulysses + self.ulysses_rank

    @property
    def coords(self) -> tuple[int, int, int]:
        """(dp_rank, ring_rank, ulysses_rank)."""
        return self.dp_rank, self.ring_rank, self.ulysses_rank

    def global_rank(self, dp_rank: int, ring_rank: int, ulysses_rank: int) -> int:
        return (dp_rank * self.ring + ring_rank) * self.ulysses + ulysses_rank

    # ---- the groups this rank belongs to ---------------------------------------------------------
    def ulysses_ranks(self) -> list[int]:
        return [self.global_rank(self.dp_rank, self.ring_rank, u) for u in range(self.ulysses)]

    def ring_ranks(self) -> list[int]:
        return [self.global_rank(self.dp_rank, r, self.ulysses_rank) for r in range(self.ring)]

    def sp_ranks(self) -> list[int]:
        base = self.dp_rank * self.sp_size
        return list(range(base, base + self.sp_size))

    def dp_ranks(self) -> list[int]:
        return [self.global_rank(d, self.ring_rank, self.ulysses_rank) for d in range(self.dp)]

    def ring_next(self) -> int:
        """Global rank that receives this rank's KV block in ring attention."""
        return self.global_rank(self.dp_rank, (self.ring_rank + 1) % self.ring, self.ulysses_rank)

    def ring_prev(self) -> int:
        return self.global_rank(self.dp_rank, (self.ring_rank - 1) % self.ring, self.ulysses_rank)

    # ---- every group of every kind (new_group must be called identically on all ranks) ----------
    def all_ulysses_groups(self) -> list[list[int]]:
        return [[self.global_rank(d, r, u) for u in range(self.ulysses)] for d in range(self.dp) for r in range(self.ring)]

    def all_ring_groups(self) -> list[list[int]]:
        return [[self.global_rank(d, r, u) for r in range(self.ring)] for d in range(self.dp) for u in range(self.ulysses)]

    def all_sp_groups(self) -> list[list[int]]:
        return [list(range(d * self.sp_size, (d + 1) * self.sp_size)) for d in range(self.dp)]

    def all_dp_groups(self) -> list[list[int]]:
        return [[self.global_rank(d, r, u) for d in range(self.dp)] for r in range(self.ring) for u in range(self.ulysses)]


@dataclass
class SPGroups:
    """A layout plus the torch.distributed groups this rank belongs to."""

    layout: SPLayout
    ulysses_group: object = field(repr=False)
    ring_group: object = field(repr=False)
    sp_group: object = field(repr=False)
    dp_group: object = field(repr=False)


def _new_groups(all_groups: list[list[int]], mine: list[int]):
    found = None
    for ranks in all_groups:
        group = dist.new_group(ranks)
        if ranks == mine:
            found = group
    return found


def init_sp_groups(ulysses: int, ring: int, *, local_world_size: int | None = None) -> SPGroups:
    """Create the Ulysses, ring, SP and DP groups for the current world (collective: call on every rank).

    local_world_size defaults to $LOCAL_WORLD_SIZE when the launcher sets it (torchrun does).
    """
    if not dist.is_initialized():
        raise RuntimeError("init_sp_groups needs torch.distributed initialised (dist.init_process_group)")
    if local_world_size is None and os.environ.get("LOCAL_WORLD_SIZE"):
        local_world_size = int(os.environ["LOCAL_WORLD_SIZE"])
    layout = SPLayout.from_world(dist.get_world_size(), dist.get_rank(), ulysses, ring, local_world_size)
    return SPGroups(
        layout=layout,
        ulysses_group=_new_groups(layout.all_ulysses_groups(), layout.ulysses_ranks()),
        ring_group=_new_groups(layout.all_ring_groups(), layout.ring_ranks()),
        sp_group=_new_groups(layout.all_sp_groups(), layout.sp_ranks()),
        dp_group=_new_groups(layout.all_dp_groups(), layout.dp_ranks()),
    )


# ---- communication accounting ------------------------------------------------------------------------
class CommStats:
    """Bytes this process sent for sequence parallelism, keyed by (kind, phase).

    kind: "ulysses" (all-to-all), "ring" (P2P), "audio" (embedding gather); phase: "fwd" or "bwd".
    Only bytes that leave the process count (an all-to-all's own slice stays home).
    """

    def __init__(self):
        self.bytes: dict[tuple[str, str], int] = defaultdict(int)

    def add(self, kind: str, phase: str, nbytes: int) -> None:
        self.bytes[(kind, phase)] += int(nbytes)

    def reset(self) -> None:
        self.bytes.clear()

    def total(self, kind: str | None = None, phase: str | None = None) -> int:
        return sum(v for (k, p), v in self.bytes.items() if (kind is None or k == kind) and (phase is None or p == phase))


comm_stats = CommStats()


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
