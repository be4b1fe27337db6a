"""Dataset registry, mixture expressions, and a deterministic, resumable, data-parallel sampler.

Registry. A TOML file (``tomllib`` reads it from the standard library, it allows comments, and it is easy
to write by hand; YAML would need a dependency, JSON has no comments) with one table per dataset::

    # registry.toml; relative paths resolve against this file's directory
    [datasets.clotho_aqa]
    manifest = "clotho/aqa_train.json"     # AF3 JSON list or JSONL
    audio_root = "/data/clotho/audio"      # optional: what relative sound paths resolve against
    weight = 2                             # optional, default 1: see below

Mixture expressions, with AF3's meaning: ``a+b`` concatenates datasets, ``name*N`` repeats a dataset N
times (N a positive integer), ``name#P`` keeps P percent of it (0 < P <= 100, decimals allowed: the
operator subsamples; repeating is what ``*`` is for), e.g. ``a*2+b#50+c``. A term takes one modifier: write
``a*2+a#50`` for two and a half copies. A term without a modifier uses the registry's ``weight``: its integer
part is a repeat count and its fraction a percentage on top (weight 0.5 = ``#50``, 1.5 = one copy plus a
half). An explicit modifier replaces the weight rather than multiplying it, so the expression says exactly
what is used. Names may hold any characters but whitespace and ``+*#``.

Resolution. ``build_mixture`` reads each manifest once and lists (dataset, row) entries: terms in
expression order, rows in file order, repeats back to back. ``#P`` keeps floor(n * P / 100) rows, chosen by
a permutation seeded from (seed, dataset name) and then sorted back into file order, so a dataset's subset
does not change when other terms are added or reordered, and ``a#50`` names the same half wherever it
appears. Rows that are not records (see ``afnext.data.manifest``) are dropped at this point and listed in
``Mixture.problems``; row indices count only the records.

Sampler. ``MixtureSampler`` turns a mixture of n entries into a stream of entry indices, epoch after epoch.
Each epoch is one permutation of 0..n-1 drawn from (seed, epoch), so the stream is a pure function of the
seed and resuming needs only (epoch, position). For data parallelism the epoch's order is dealt round-robin:
rank r takes positions r, r + W, r + 2W, ... (W = world_size), so in step t the W ranks together consume
positions tW .. tW + W - 1 and every index of the epoch goes to exactly one rank. When W does not divide n,
``drop_last=False`` pads the order with its own first ``ceil(n/W)*W - n`` indices so all ranks take the same
number of steps (collectives stay in lockstep; those few items are seen twice that epoch), and
``drop_last=True`` drops the last ``n mod W`` indices of the shuffled order instead (different ones each
epoch). Permutations come from NumPy's PCG64 generator, whose stream NumPy keeps stable, so a resumed run
with the same NumPy version reproduces the original order exactly.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
import warnings
import zlib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Mapping, NamedTuple

import numpy as np

from afnext.data.manifest import Problem, Record, iter_manifest


class MixtureError(ValueError):
    """A registry or mixture expression is invalid; the message says where and why."""


# ----------------------------------------------------------------------------- registry

_NAME = re.compile(r"[^\s+*#]+")
_ENTRY_KEYS = {"manifest", "audio_root", "weight"}


@dataclass(frozen=True)
class DatasetSpec:
    """One registry entry. ``weight`` is the modifier of a term that has none (see the module docstring)."""

    name: str
    manifest: Path
    audio_root: Path | None = None
    weight: float = 1.0


@dataclass
class Registry:
    """Dataset name -> DatasetSpec, usually read from a TOML file with ``Registry.load``."""

    datasets: dict[str, DatasetSpec] = field(default_factory=dict)
    path: Path | None = None

    def __contains__(self, name: str) -> bool:
        return name in self.datasets

    def __getitem__(self, name: str) -> DatasetSpec:
        return self.datasets[name]

    @property
    def names(self) -> list[str]:
        return list(self.datasets)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Registry":
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise MixtureError(f"{path}: invalid TOML: {e}") from None
        reg = cls.from_dict(data, base_dir=path.absolute().parent, source=str(path))
        reg.path = path
        return reg

    @classmethod
    def from_dict(cls, data: Mapping, *, base_dir: str | os.PathLike = ".", source: str = "registry") -> "Registry":
        """Build from ``{"datasets": {name: {"manifest": ..., "audio_root": ..., "weight": ...}}}``."""
        base = Path(base_dir).absolute()
        unknown_top = set(data) - {"datasets"}
        if unknown_top:
            raise MixtureError(f"{source}: unknown top-level key(s) {sorted(unknown_top)}; expected [datasets.<name>]")
        tables = data.get("datasets", {})
        if not isinstance(tables, Mapping):
            raise MixtureError(f"{source}: 'datasets' must be a table of tables")
        out = {}
        for name, entry in tables.items():
            where = f"{source}: dataset {name!r}"
            if not _NAME.fullmatch(name):
                raise MixtureError(f"{where}: names cannot contain whitespace or '+', '*', '#'")
            if not isinstance(entry, Mapping):
                raise MixtureError(f"{where}: expected a table with 'manifest'")
            extra = set(entry) - _ENTRY_KEYS
            if extra:  # a misspelt key (audio-root) would otherwise be ignored silently
                raise MixtureError(f"{where}: unknown key(s) {sorted(extra)}; allowed: {sorted(_ENTRY_KEYS)}")
            if not isinstance(entry.get("manifest"), str):
                raise MixtureError(f"{where}: 'manifest' (a path) is required")
            root = entry.get("audio_root")
            if root is not None and not isinstance(root, str):
                raise MixtureError(f"{where}: 'audio_root' must be a path")
            weight = entry.get("weight", 1)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (0 < weight < math.inf):
                raise MixtureError(f"{where}: 'weight' must be a positive number, got {weight!r}")
            out[name] = DatasetSpec(name, _abs(entry["manifest"], base), _abs(root, base) if root else None,
                                    float(weight))
        return cls(out)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the registry as TOML (paths absolute, so the file can move)."""
        lines = ["# afnext dataset registry: [datasets.<name>] manifest, audio_root (optional), weight (default 1)"]
        for spec in self.datasets.values():
            lines += ["", f"[datasets.{_toml_key(spec.name)}]", f"manifest = {_toml_str(str(spec.manifest))}"]
            if spec.audio_root is not None:
                lines.append(f"audio_root = {_toml_str(str(spec.audio_root))}")
            if spec.weight != 1:
                lines.append(f"weight = {int(spec.weight) if spec.weight.is_integer() else spec.weight!r}")
        path = Path(path)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path


def _abs(p: str, base: Path) -> Path:
    q = Path(os.path.expanduser(p))
    return q if q.is_absolute() else Path(os.path.normpath(base / q))


def _toml_str(s: str) -> str:
    # A TOML basic string accepts the escapes below; everything else printable goes in literally.
    esc = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\b": "\\b", "\f": "\\f"}
    return '"' + "".join(esc.get(c, c if c.isprintable() else f"\\u{ord(c):04x}") for c in s) + '"'


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _toml_str(name)


def load_registry(path: str | os.PathLike) -> Registry:
    return Registry.load(path)


# ----------------------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Term:
    """One ``name``, ``name*N`` or ``name#P`` of an expression; ``position`` is its offset in the text."""

    name: str
    repeat: int | None = None
    percent: Fraction | None = None
    text: str = ""
    position: int = 0

    def __post_init__(self):
        if self.repeat is not None and self.percent is not None:
            raise MixtureError(f"term {self.name!r} takes one modifier, *N or #P, not both")
        if self.repeat is not None and (isinstance(self.repeat, bool) or not isinstance(self.repeat, int)
                                        or self.repeat < 1):
            raise MixtureError(f"term {self.name!r}: repeat count must be a positive integer, got {self.repeat!r}")
        if self.percent is not None:
            # Via str so a float like 12.3 means 123/10, not its binary approximation.
            p = self.percent if isinstance(self.percent, Fraction) else Fraction(str(self.percent))
            if not 0 < p <= 100:
                raise MixtureError(f"term {self.name!r}: percentage must be in (0, 100], got {self.percent}")
            object.__setattr__(self, "percent", p)  # frozen dataclass: normalise once, here

    def count(self, n: int, weight: float = 1.0) -> int:
        """How many entries this term contributes for a dataset of n records."""
        reps, frac = self._split(weight)
        return reps * n + (frac.numerator * n) // frac.denominator

    def _split(self, weight: float) -> tuple[int, Fraction]:
        """(full repeats, extra fraction kept by subsampling)."""
        if self.repeat is not None:
            return self.repeat, Fraction(0)
        if self.percent is not None:
            return (1, Fraction(0)) if self.percent == 100 else (0, self.percent / 100)
        w = Fraction(weight).limit_denominator(10**6)  # 0.1 as a float is not 1/10; keep the intended value
        return int(w), w - int(w)


_TERM = re.compile(r"(?P<name>[^\s+*#]*)\s*(?:(?P<op>[*#])\s*(?P<num>.*?))?\s*")


def parse_mixture(expr: str, known: Mapping | Registry | list[str] | None = None) -> list[Term]:
    """Parse ``a*2+b#50+c`` into Terms. With ``known`` (dataset names), unknown names are errors too.

    Errors (``MixtureError``) quote the expression and say which term is wrong and why: empty expression or
    term, a modifier without a name, a repeat count that is not a positive integer, a percentage outside
    (0, 100], two modifiers on one term, an unknown dataset (with the closest known names).
    """
    if not isinstance(expr, str) or not expr.strip():
        raise MixtureError("empty mixture expression")
    names = None if known is None else list(known.names if isinstance(known, Registry) else known)
    terms = []
    pos = 0
    for raw in expr.split("+"):
        start = pos + len(raw) - len(raw.lstrip())
        pos += len(raw) + 1
        text = raw.strip()
        where = f"in mixture {expr!r}, term {len(terms) + 1}"
        if not text:
            raise MixtureError(f"{where} (at character {start}) is empty: use '+' only between dataset names")
        m = _TERM.fullmatch(text)
        if m is None:
            raise MixtureError(f"{where} ({text!r}) is not 'name', 'name*N' or 'name#P' "
                               f"(names cannot contain whitespace)")
        if m["op"] and re.search(r"[*#]", m["num"]):
            raise MixtureError(f"{where} ({text!r}) takes one modifier, *N or #P, not several; "
                               f"write e.g. 'a*2+a#50' for two and a half copies")
        name, op, num = m["name"], m["op"], m["num"]
        if not name:
            raise MixtureError(f"{where} ({text!r}) has no dataset name before {op!r}")
        repeat = percent = None
        if op == "*":
            if not re.fullmatch(r"\d+", num or "") or int(num) < 1:
                raise MixtureError(f"{where} ({text!r}): bad repeat count {num!r}; expected a positive integer "
                                   f"(use #P to keep a fraction)")
            repeat = int(num)
        elif op == "#":
            if not re.fullmatch(r"\d+(\.\d+)?", num or ""):
                raise MixtureError(f"{where} ({text!r}): bad percentage {num!r}; expected a number in (0, 100]")
            percent = Fraction(num)
            if not 0 < percent <= 100:
                hint = "; use *N to repeat a dataset" if percent > 100 else ""
                raise MixtureError(f"{where} ({text!r}): percentage must be in (0, 100], got {num}{hint}")
        if names is not None and name not in names:
            close = difflib.get_close_matches(name, names, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else \
                f"; known: {', '.join(names) if names else '(none)'}"
            raise MixtureError(f"{where}: unknown dataset {name!r}{hint}")
        terms.append(Term(name, repeat, percent, text, start))
    return terms


def _subset_seed(seed: int, name: str) -> np.random.Generator:
    # crc32 rather than hash(): str hashes are salted per process, which would break determinism.
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


def resolve_mixture(terms: list[Term], sizes: Mapping[str, int], seed: int = 0,
                    weights: Mapping[str, float] | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Entries of a parsed mixture, given each dataset's size: ``(names, dataset_index, row_index)``, where
    entry i is row ``row_index[i]`` of dataset ``names[dataset_index[i]]``."""
    names: list[str] = []
    ds_parts, row_parts = [], []
    for term in terms:
        if term.name not in sizes:
            raise MixtureError(f"unknown dataset {term.name!r} (no size given)")
        n = sizes[term.name]
        if term.name not in names:
            names.append(term.name)
        d = names.index(term.name)
        reps, frac = term._split((weights or {}).get(term.name, 1.0))
        rows = [np.arange(n, dtype=np.int64)] * reps
        keep = (frac.numerator * n) // frac.denominator
        if keep:
            chosen = _subset_seed(seed, term.name).permutation(n)[:keep]
            rows.append(np.sort(chosen).astype(np.int64))
        for r in rows:
            row_parts.append(r)
            ds_parts.append(np.full(len(r), d, dtype=np.int32))
    cat = lambda parts, dt: np.concatenate(parts) if parts else np.zeros(0, dt)  # noqa: E731
    return names, cat(ds_parts, np.int32), cat(row_parts, np.int64)


class Entry(NamedTuple):
    dataset: str
    row: int  # index into Mixture.records[dataset] (records only, 0-based); Record.row is the file row


class Mixture:
    """A resolved mixture: ``len(m)`` entries, ``m[i] -> Entry(dataset, row)``, ``m.record(i) -> Record``.

    Entries live in two NumPy arrays rather than a list of tuples so a mixture of tens of millions of
    entries stays small.
    """

    def __init__(self, expr: str, terms: list[Term], records: dict[str, list[Record]], seed: int = 0,
                 weights: Mapping[str, float] | None = None, problems: list[Problem] | None = None):
        self.expr = expr
        self.terms = terms
        self.seed = seed
        self.records = records
        self.problems = problems or []
        self.names, self.dataset_index, self.row_index = resolve_mixture(
            terms, {k: len(v) for k, v in records.items()}, seed, weights)

    @classmethod
    def from_records(cls, records: Mapping[str, list[Record]] | list[Record], expr: str | None = None,
                     seed: int = 0) -> "Mixture":
        """A mixture over in-memory records; a plain list is one dataset named "data" used once."""
        if not isinstance(records, Mapping):
            records = {"data": list(records)}
        expr = expr or "+".join(records)
        return cls(expr, parse_mixture(expr, list(records)), dict(records), seed)

    @classmethod
    def from_manifest(cls, path: str | os.PathLike, *, audio_root: str | os.PathLike | None = None,
                      name: str | None = None) -> "Mixture":
        """Every record of one manifest, once, in file order."""
        records, problems = _read(path, audio_root)
        _warn_dropped(problems)
        name = name or "data"
        return cls(name, [Term(name, text=name)], {name: records}, problems=problems)

    def __len__(self) -> int:
        return len(self.row_index)

    def __getitem__(self, i: int) -> Entry:
        return Entry(self.names[self.dataset_index[i]], int(self.row_index[i]))

    def __iter__(self) -> Iterator[Entry]:
        for i in range(len(self)):
            yield self[i]

    def record(self, i: int) -> Record:
        name, row = self[i]
        return self.records[name][row]

    def counts(self) -> dict[str, int]:
        """Entries per dataset."""
        per = np.bincount(self.dataset_index, minlength=len(self.names))
        return {name: int(c) for name, c in zip(self.names, per)}

    def __repr__(self) -> str:
        return f"Mixture({self.expr!r}, entries={len(self)}, counts={self.counts()})"


def _read(path, audio_root) -> tuple[list[Record], list[Problem]]:
    records, problems = [], []
    for rec, problem in iter_manifest(path, audio_root=audio_root, strict=False):
        (records if rec is not None else problems).append(rec if rec is not None else problem)
    return records, problems


def _warn_dropped(problems: list[Problem]) -> None:
    if problems:
        first = problems[0]
        warnings.warn(f"dropped {len(problems)} unreadable manifest row(s), first: {first}", stacklevel=3)


def build_mixture(expr: str, registry: Registry | str | os.PathLike | Mapping[str, DatasetSpec],
                  seed: int = 0) -> Mixture:
    """Parse ``expr``, read each named manifest once, and resolve the entries (see the module docstring).

    ``registry`` is a Registry, a path to a registry TOML file, or a mapping of names to DatasetSpecs.
    Rows that are not records are dropped with a warning and kept in ``Mixture.problems``.
    """
    if isinstance(registry, (str, os.PathLike)):
        registry = Registry.load(registry)
    elif not isinstance(registry, Registry):
        registry = Registry(dict(registry))
    terms = parse_mixture(expr, registry)
    records: dict[str, list[Record]] = {}
    problems: list[Problem] = []
    for term in terms:
        if term.name not in records:
            spec = registry[term.name]
            if not spec.manifest.is_file():
                raise MixtureError(f"dataset {term.name!r}: manifest {spec.manifest} not found")
            records[term.name], dropped = _read(spec.manifest, spec.audio_root)
            problems += dropped
    _warn_dropped(problems)
    weights = {name: spec.weight for name, spec in registry.datasets.items()}
    return Mixture(expr, terms, records, seed, weights, problems)


# ----------------------------------------------------------------------------- sampler


class MixtureSampler:
    """Deterministic, resumable, data-parallel sampler of entry indices (see the module docstring).

    ``iter(sampler)`` yields this rank's indices from the current position to the end of the current epoch,
    then moves to the next epoch, so ``for epoch ...: for i in sampler`` walks epoch after epoch, and
    ``stream()`` walks them without end. ``len(sampler)`` is the number of indices per epoch for one rank.
    ``state_dict()`` is the same on every rank (ranks advance in lockstep), so rank 0 may save it for all.
    """

    def __init__(self, data, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False):
        n = data if isinstance(data, int) else len(data)
        if n < 0:
            raise ValueError(f"negative dataset size {n}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1} (world_size {world_size})")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.num_items = n
        self.seed, self.shuffle, self.rank, self.world_size, self.drop_last = seed, shuffle, rank, world_size, drop_last
        self.num_samples = n // world_size if drop_last else -(-n // world_size)  # per rank per epoch
        self.epoch = 0
        self.position = 0  # indices of the current epoch already yielded by this rank
        self._cache: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.num_samples

    @property
    def total_size(self) -> int:
        """Indices per epoch over all ranks, after padding or dropping."""
        return self.num_samples * self.world_size

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The global order of ``epoch`` (all ranks), padded or trimmed to ``total_size``."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        n = self.num_items
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(n).astype(np.int64)
        else:
            order = np.arange(n, dtype=np.int64)
        # np.resize repeats the order cyclically, so padding wraps around even when n < world_size.
        order = order[: self.total_size] if self.drop_last else np.resize(order, self.total_size)
        self._cache = (epoch, order)
        return order

    def indices(self, epoch: int | None = None) -> np.ndarray:
        """This rank's indices for ``epoch`` (default: the current one), in the order they are yielded."""
        return self.epoch_order(self.epoch if epoch is None else epoch)[self.rank :: self.world_size]

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning (the torch DistributedSampler convention)."""
        self.epoch, self.position = epoch, 0

    def _normalise(self) -> None:
        if self.num_samples and self.position >= self.num_samples:
            self.epoch, self.position = self.epoch + 1, 0

    def __iter__(self) -> Iterator[int]:
        self._normalise()
        mine = self.indices()
        while self.position < len(mine):
            i = int(mine[self.position])
            self.position += 1  # before yielding: once handed out, an index counts as consumed
            yield i
        self.epoch, self.position = self.epoch + 1, 0

    def stream(self, max_epochs: int | None = None) -> Iterator[int]:
        """Indices across epochs, from the current position, for ``max_epochs`` more epochs or forever."""
        if self.num_samples == 0:
            return
        done = 0
        while max_epochs is None or done < max_epochs:
            yield from self
            done += 1

    def state_dict(self) -> dict:
        self._normalise()
        return {"epoch": self.epoch, "position": self.position, "consumed": self.position * self.world_size,
                "seed": self.seed, "shuffle": self.shuffle, "num_items": self.num_items,
                "world_size": self.world_size, "drop_last": self.drop_last}

    def load_state_dict(self, state: Mapping) -> None:
        """Resume at a saved (epoch, position). Seed, shuffle and dataset size must match (another order
        would make "the rest of the stream" meaningless). A different world size is accepted when the saved
        global count of consumed indices divides evenly into the new one's steps."""
        for key in ("seed", "shuffle", "num_items", "drop_last"):
            if state[key] != getattr(self, key):
                raise ValueError(f"cannot resume: saved {key}={state[key]!r} but this sampler has "
                                 f"{getattr(self, key)!r}")
        if state["world_size"] == self.world_size:
            position = state["position"]
        else:
            consumed = state["consumed"]
            if consumed % self.world_size or consumed > self.num_items:
                raise ValueError(f"cannot resume {consumed} consumed indices with world_size {self.world_size}: "
                                 f"need a multiple of {self.world_size} within the epoch's unpadded part")
            position = consumed // self.world_size
        self.epoch, self.position = int(state["epoch"]), int(position)
