"""Task families of the synthetic audio-skills corpus: the contract every family follows.

A family is a function `(rng, index) -> Item` that makes one labelled example from scratch: its audio
(16 kHz float32 arrays), an AF3-format conversation, and the exact ground truth in `extra`. Families
draw every random choice from the `rng` they are given (seeded per item by the generator from
(seed, split, family, index)), so an item is the same whatever process or order builds it.

`extra` always holds `task` and `labels` (the ground truth, machine-readable, e.g. event onsets in
seconds). Multiple-choice items also hold MMAU-compatible fields: `question`, `choices` (list of
strings), `answer` (one of the choices, verbatim), `category`, `difficulty` ("easy" | "medium" |
"hard"); their gpt answer is the answer string.

Families register themselves with `@family(...)`; `afnext.data.synth` builds a corpus from the
registry. Modules that define families are imported in `load_all()`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Item:
    id: str  # set by the generator (family/split/index); families may leave it ""
    family: str
    audios: list[np.ndarray]  # 16 kHz float32 mono, in placeholder order
    conversations: list[dict]  # [{"from": "human", "value": "<sound>\n..."}, {"from": "gpt", "value": "..."}]
    extra: dict = field(default_factory=dict)  # task, labels; MC fields for multiple-choice items

    @property
    def duration_s(self) -> float:
        return sum(len(a) for a in self.audios) / 16_000


FamilyFn = Callable[[np.random.Generator, int], Item]


@dataclass(frozen=True)
class Family:
    name: str
    fn: FamilyFn
    skill: str  # "speech" | "sound" | "music" | "temporal" | "multi" | "caption" | "reasoning"
    long: bool = False  # makes 10-30 min clips (generated in small numbers)
    multiple_choice: bool = False


FAMILIES: dict[str, Family] = {}

# Modules that define families; each registers with @family on import.
FAMILY_MODULES = ("afnext.data.families.speech", "afnext.data.families.sound")


def family(name: str, *, skill: str, long: bool = False, multiple_choice: bool = False):
    def register(fn: FamilyFn) -> FamilyFn:
        if name in FAMILIES:
            raise ValueError(f"task family {name!r} registered twice")
        FAMILIES[name] = Family(name, fn, skill, long, multiple_choice)
        return fn

    return register


def load_all() -> dict[str, Family]:
    for module in FAMILY_MODULES:
        importlib.import_module(module)
    return FAMILIES


def item_seed(seed: int, split: str, family_name: str, index: int) -> np.random.Generator:
    """Independent, order-free random stream per item."""
    key = [seed, sum(map(ord, split)) * 7919 + len(split), *map(ord, family_name), index]
    return np.random.default_rng(np.random.SeedSequence(key))
