"""Loading training examples from a mixture without letting one bad file stop a run.

``ManifestDataset`` is map-style: item i of a ``Mixture`` (or of a single manifest) is its record with the
audio decoded by ``afnext.audio.load_audio`` (float32 mono, 16 kHz). Placeholders are bound on the way out:
``<sound-k>`` becomes ``<sound>`` and the waves are put in the order the placeholders appear (see
``afnext.data.manifest.placeholders_to_sound_tokens``), so the tokenizer stage pairs the j-th ``<sound>``
with ``waves[j]`` and never needs the manifest's numbering. A missing or undecodable audio file, or
placeholders that cannot be bound, raise ``SampleError`` naming the reason, manifest, row and id.

``SkippingLoader`` walks a ``MixtureSampler``'s indices, catches ``SampleError`` (only: any other exception
is a bug and propagates), records the skip in a ``SkipSummary`` and moves on to the next index. Skipping
alone would leave ranks with different numbers of items per epoch, and a data-parallel step whose ranks
disagree on the step count hangs in a collective. So by default (``keep_length=True``) each epoch yields
exactly ``len(sampler)`` items: after the rank's indices run out, the shortfall is made up with the rank's
own good items from the start of the same epoch's order (never another rank's, so no cross-rank duplicates
appear). Everything is a function of the sampler's order and the files, so the output is deterministic;
threads (``num_threads``) only load ahead and never change the order.

Resuming. The loader keeps its own cursor (epoch, position, outstanding shortfall, fill position, the
epoch's known-bad positions), so ``state_dict()`` / ``load_state_dict()`` reproduce the remaining items
exactly. With skips, ranks' positions differ, so each rank saves its own loader state; the sampler's own
state is only its starting point.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

from afnext.audio import AudioError, load_audio
from afnext.data.audio_cache import AudioCache
from afnext.data.manifest import (
    CORRUPT_AUDIO,
    MISSING_AUDIO,
    PLACEHOLDER_MISMATCH,
    PlaceholderError,
    Record,
    conversations_to_sound_tokens,
)
from afnext.data.mixture import Mixture, MixtureSampler

log = logging.getLogger(__name__)


class SampleError(ValueError):
    """An example cannot be loaded; ``reason`` is a problem kind (missing_audio, corrupt_audio, ...)."""

    def __init__(self, reason: str, message: str, *, manifest: Path | None, row: int, id: str,
                 dataset: str | None = None):
        self.reason, self.manifest, self.row, self.id, self.dataset = reason, manifest, row, id, dataset
        self.detail = message
        where = f"{manifest if manifest is not None else '<manifest>'}:{row}"
        super().__init__(f"{where} [{id}]: {reason}: {message}")


@dataclass(frozen=True)
class SkipEvent:
    manifest: Path | None
    row: int  # the row in the manifest file (1-based line or item index)
    id: str
    reason: str
    message: str = ""
    dataset: str | None = None


@dataclass
class SkipSummary:
    """Skipped examples: counts by reason and each skip's (manifest, row, id, reason)."""

    attempted: int = 0  # items the loader tried to load
    events: list[SkipEvent] = field(default_factory=list)

    def add(self, event: SkipEvent) -> None:
        self.events.append(event)

    @property
    def skipped(self) -> int:
        return len(self.events)

    @property
    def counts(self) -> dict[str, int]:
        """Skips per reason, most frequent first."""
        return dict(Counter(e.reason for e in self.events).most_common())

    def summary(self) -> str:
        """One line, e.g. "skipped 3 of 120 rows: 2 missing audio, 1 corrupt audio"."""
        line = f"skipped {self.skipped} of {self.attempted} rows"
        if self.events:
            line += ": " + ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in self.counts.items())
        return line

    def to_dict(self) -> dict:
        return {"attempted": self.attempted, "skipped": self.skipped, "counts": self.counts,
                "events": [{"manifest": str(e.manifest) if e.manifest is not None else None, "row": e.row,
                            "id": e.id, "reason": e.reason, "message": e.message, "dataset": e.dataset}
                           for e in self.events]}

    @classmethod
    def from_dict(cls, d: Mapping) -> "SkipSummary":
        events = [SkipEvent(Path(e["manifest"]) if e["manifest"] is not None else None, e["row"], e["id"],
                            e["reason"], e.get("message", ""), e.get("dataset")) for e in d["events"]]
        return cls(int(d["attempted"]), events)


class ManifestDataset:
    """Map-style dataset over a Mixture, a manifest path, or a list of Records.

    ``ds[i]`` is ``{"id", "waves", "conversations", "extra", "sounds", "dataset", "row", "manifest",
    "index"}``: ``waves`` are float32 mono 16-kHz arrays in ``<sound>`` order, ``sounds`` their paths in the
    same order, ``row`` the 1-based row in the manifest file. With ``bind_placeholders=False`` the
    conversations are returned as written and the waves in the record's ``sound`` order.
    """

    def __init__(self, source: Mixture | str | os.PathLike | list[Record], *,
                 audio_root: str | os.PathLike | None = None, bind_placeholders: bool = True,
                 audio_cache: AudioCache | None = None):
        if isinstance(source, Mixture):
            self.mixture = source
        elif isinstance(source, (str, os.PathLike)):
            self.mixture = Mixture.from_manifest(source, audio_root=audio_root)
        else:
            self.mixture = Mixture.from_records(list(source))
        self.bind_placeholders = bind_placeholders
        self.audio_cache = audio_cache  # decoded waves kept across epochs (afnext.data.audio_cache)

    def __len__(self) -> int:
        return len(self.mixture)

    def record(self, i: int) -> Record:
        return self.mixture.record(i)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} entries")
        i %= len(self)
        dataset = self.mixture[i].dataset
        rec = self.mixture.record(i)

        def fail(reason, message):
            return SampleError(reason, message, manifest=rec.manifest, row=rec.row, id=rec.id, dataset=dataset)

        if self.bind_placeholders:
            try:
                conversations, order = conversations_to_sound_tokens(rec.conversations, len(rec.sounds))
            except PlaceholderError as e:
                raise fail(PLACEHOLDER_MISMATCH, str(e)) from None
        else:
            conversations, order = [dict(t) for t in rec.conversations], list(range(len(rec.sounds)))
        # Check every file exists before decoding any, so a missing file costs no decoding.
        for path in rec.sounds:
            if not path.is_file():
                raise fail(MISSING_AUDIO, f"{path}: not found" if not path.exists() else f"{path}: not a file")
        decoded: dict[Path, object] = {}
        load = self.audio_cache.load if self.audio_cache is not None else load_audio
        for path in rec.sounds:  # a record may name one file twice; decode it once
            if path not in decoded:
                try:
                    decoded[path] = load(path, name=str(path))
                except AudioError as e:
                    raise fail(CORRUPT_AUDIO, str(e)) from None
        sounds = [rec.sounds[k] for k in order]
        return {"id": rec.id, "waves": [decoded[p] for p in sounds], "conversations": conversations,
                "extra": dict(rec.extra), "sounds": sounds, "dataset": dataset, "row": rec.row,
                "manifest": rec.manifest, "index": i}


class SkippingLoader:
    """Iterate a dataset in a sampler's order, skipping examples that fail to load (see the module docstring).

    ``iter(loader)`` yields the rest of the current epoch, then moves to the next one; ``len(loader)`` is the
    number of items per epoch (``len(sampler)``; fewer are possible only with ``keep_length=False``).
    ``summary`` accumulates the skips. ``num_threads > 0`` loads up to ``prefetch`` items ahead (default
    2 * num_threads) in a thread pool; decoding releases the GIL, so threads overlap it.
    """

    def __init__(self, dataset: ManifestDataset, sampler: MixtureSampler | None = None, *,
                 keep_length: bool = True, num_threads: int = 0, prefetch: int | None = None):
        self.dataset = dataset
        self.sampler = sampler if sampler is not None else MixtureSampler(len(dataset), shuffle=False)
        if self.sampler.num_items != len(dataset):
            raise ValueError(f"sampler covers {self.sampler.num_items} items but the dataset has {len(dataset)}")
        self.keep_length = keep_length
        self.num_threads = num_threads
        self.prefetch = max(1, prefetch if prefetch is not None else 2 * num_threads)
        self.summary = SkipSummary()
        self._logged: set[tuple] = set()
        self.epoch, self.position = self.sampler.epoch, self.sampler.position
        self._reset_fill()

    def _reset_fill(self) -> None:
        self.deficit = 0  # items still owed this epoch because of skips
        self.fill_position = 0  # next position of the epoch's order to try as a replacement
        self.bad: set[int] = set()  # positions of this epoch's order known to fail

    def __len__(self) -> int:
        return len(self.sampler)

    def _try(self, index: int):
        try:
            return self.dataset[index], None
        except SampleError as e:
            return None, e

    def _skip(self, err: SampleError) -> None:
        self.summary.add(SkipEvent(err.manifest, err.row, err.id, err.reason, err.detail, err.dataset))
        key = (err.manifest, err.row)
        if key not in self._logged:  # once per row: a bad row in a repeated dataset would flood the log
            self._logged.add(key)
            log.warning("skipping %s", err)

    def _results(self, indices, start: int) -> Iterator:
        """(item, error) for indices[start:], in order, loaded ahead by the thread pool when there is one."""
        n = len(indices)
        if self.num_threads <= 0:
            for pos in range(start, n):
                yield self._try(int(indices[pos]))
            return
        pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="afnext-load")
        pending: deque = deque()
        nxt = start
        try:
            while nxt < n or pending:
                while nxt < n and len(pending) < self.prefetch:
                    pending.append(pool.submit(self._try, int(indices[nxt])))
                    nxt += 1
                yield pending.popleft().result()
        finally:
            # Items loaded ahead but never consumed are dropped; the cursor never counted them.
            pool.shutdown(wait=False, cancel_futures=True)

    def __iter__(self) -> Iterator[dict]:
        self._normalise()
        mine = self.sampler.indices(self.epoch)
        n = len(mine)
        for item, err in self._results(mine, self.position):
            pos = self.position
            self.position += 1
            self.summary.attempted += 1
            if err is None:
                yield item
                continue
            self._skip(err)
            self.bad.add(pos)
            if self.keep_length:
                self.deficit += 1
        # Make up this epoch's shortfall from the rank's own good items, from the start of its order.
        misses = 0
        while self.deficit > 0:
            if misses >= n:
                raise RuntimeError(f"epoch {self.epoch}: none of this rank's {n} items can be loaded "
                                   f"({self.summary.summary()})")
            pos = self.fill_position % n
            self.fill_position += 1
            if pos in self.bad:
                misses += 1
                continue
            item, err = self._try(int(mine[pos]))
            self.summary.attempted += 1
            if err is not None:
                self._skip(err)
                self.bad.add(pos)
                misses += 1
                continue
            misses = 0
            self.deficit -= 1
            yield item
        self.epoch, self.position = self.epoch + 1, 0
        self._reset_fill()

    def _normalise(self) -> None:
        if len(self.sampler) and self.position >= len(self.sampler) and self.deficit == 0:
            self.epoch, self.position = self.epoch + 1, 0
            self._reset_fill()

    def stream(self, max_epochs: int | None = None) -> Iterator[dict]:
        """Items across epochs, from the current position, for ``max_epochs`` more epochs or forever."""
        if len(self.sampler) == 0:
            return
        done = 0
        while max_epochs is None or done < max_epochs:
            yield from self
            done += 1

    def state_dict(self) -> dict:
        """This rank's cursor, plus the sampler settings it is only valid for, plus the skip summary."""
        self._normalise()
        s = self.sampler
        return {"epoch": self.epoch, "position": self.position, "deficit": self.deficit,
                "fill_position": self.fill_position, "bad": sorted(self.bad),
                "sampler": {"seed": s.seed, "shuffle": s.shuffle, "num_items": s.num_items, "rank": s.rank,
                            "world_size": s.world_size, "drop_last": s.drop_last},
                "keep_length": self.keep_length, "summary": self.summary.to_dict()}

    def load_state_dict(self, state: Mapping) -> None:
        s = self.sampler
        for key, saved in state["sampler"].items():
            if getattr(s, key) != saved:
                raise ValueError(f"cannot resume: loader state was saved with sampler {key}={saved!r}, "
                                 f"this sampler has {getattr(s, key)!r}")
        if state["keep_length"] != self.keep_length:
            raise ValueError(f"cannot resume: saved keep_length={state['keep_length']}, this loader has "
                             f"{self.keep_length}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.deficit, self.fill_position = int(state["deficit"]), int(state["fill_position"])
        self.bad = set(state["bad"])
        self.summary = SkipSummary.from_dict(state["summary"])
