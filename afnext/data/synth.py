"""The synthetic audio-skills corpus generator: every registered task family -> AF3 manifests + FLAC.

    from afnext.data.synth import synthesize
    report = synthesize("data/nano", preset="nano", seed=0)     # ~5,700 items, a few minutes on 2 cores

What it writes under ``out_dir``::

    audio/<split>/<family>/<id>_<k>.flac   16-bit 16-kHz mono FLAC; k = 1, 2, ... in <sound-k> order
    train.jsonl, eval.jsonl                NVIDIA AF3 format: id, sound (relative path; a list for several
                                           audios), duration (s; a list for several), conversations, plus
                                           family, task, labels (exact ground truth) and, for
                                           multiple-choice items, question/choices/answer/category/
                                           sub_category/difficulty/domain
    eval_mc.json                           the multiple-choice eval items as MMAU-style records (id,
                                           audio_id, sound, question, choices, answer, task = MMAU domain,
                                           category, sub-category, difficulty, dataset, split, family)
    registry.toml                          datasets "train" and "eval" for ``afnext.data.mixture``
    tokenizer/                             byte-level BPE trained on the corpus text (Qwen2 pipeline, AF-Next
                                           control tokens), loadable by ``Processor.from_pretrained``
                                           (a minimal config.json is included)
    synth_report.json                      counts per split/family, audio hours, long clips, disk size,
                                           wall time, seed, preset

Determinism. Item ``index`` of ``family`` in ``split`` is built from its own generator,
``item_seed(seed, split, family, index)``, so its audio, text and labels do not depend on which worker
builds it, in what order, or which other families run. Manifests are written in (split, family
registration order, index) order after all items are back. So the output is byte-identical for any
worker count (the report's wall time and worker count aside).

Parallelism. Items go to a ``spawn`` process pool (safe with torch and espeak loaded in the parent; no
forked library state) in chunks of ``CHUNK_ITEMS``; long families' items (10-30 min clips, ~100x the
work of a short item) are submitted first and one per chunk, so they never straggle at the end. Workers
run with single-threaded BLAS/OpenMP (``_WORKER_ENV``): the parallelism is the processes, and OpenBLAS'
own threads make a short ``np.dot`` thousands of times slower on small machines.

Tokenizer. ``TOKENIZER_VOCAB`` learned entries. Measured on nano (mean chat-template text tokens per
sample, system turn included): 500 -> 155, 1000 -> 136, 2000 -> 133, and the corpus saturates near
2,250 merges (132.5), so 2,048 keeps sequences within 0.1 % of the shortest at the smallest embedding.
The default system prompt and role names are weighted once per record, since every sample carries them.

Counts. A ``Preset`` gives totals per split; short families share them evenly (never fewer than the
preset's per-family minimum), long families share the long-clip totals. Counts are computed over *all*
registered families, so ``families=[...]`` builds a subset with the same per-family counts (and the same
items) as a full run.

Files and reruns. Every file is written to a temporary name in its final directory and renamed into
place (atomic on POSIX), so an interrupted run leaves only complete files (and possibly hidden
``.*.tmp`` leftovers of killed workers). Rerunning into the same directory is allowed: every file is
overwritten, and in each ``audio/<split>/<family>`` directory the run rebuilds, FLAC files it did not
produce (from an earlier, larger run) and stale temporaries are deleted, so the manifests and the audio
agree. Audio of families the run did not build is left alone.
"""

from __future__ import annotations

import importlib
import json
import math
import multiprocessing as mp
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from afnext.audio import SAMPLE_RATE
from afnext.data.families import FAMILIES, FAMILY_MODULES, Family, Item, item_seed

SPLITS = ("train", "eval")
CHUNK_ITEMS = 16  # short items per pool task: amortises pickling without hurting load balance
TOKENIZER_VOCAB = 2048  # learned BPE entries incl. the 256 bytes; past ~1,500 the nano corpus gains <1 % shorter text
MIN_AUDIO_SAMPLES = 321  # 3 mel frames: the fewest that give one encoder token (afnext.data.tokenize)
DATASET_NAME = "afnext-synth"
MC_FIELDS = ("question", "choices", "answer", "category", "sub_category", "difficulty", "domain")
DIFFICULTIES = ("easy", "medium", "hard")
_WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
_PLACEHOLDER = re.compile(r"<sound(?:-\d+)?>|</?think>")


# ----------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class Preset:
    """How many items to build. ``train_items``/``eval_items`` are totals shared evenly by the short
    families (each gets at least ``min_train``/``min_eval``); ``long_train``/``long_eval`` are totals
    of long-clip items shared by the long families. ``long_duration_s`` overrides the length range of
    long clips (families honouring ``families.sound.long_durations``), for fast tests.
    ``train_per_family`` sets some families' training item counts outright (e.g. more clips of a family
    that a small model would otherwise memorise); held-out counts are unaffected."""

    name: str
    train_items: int
    eval_items: int
    long_train: int
    long_eval: int
    min_train: int = 1
    min_eval: int = 1
    long_duration_s: tuple[float, float] | None = None
    train_per_family: tuple[tuple[str, int], ...] = ()  # (family, training items) pairs


PRESETS: dict[str, Preset] = {
    # tests: two train and one eval item per family, one 10-minute long clip per split
    "micro": Preset("micro", 0, 0, 1, 1, min_train=2, min_eval=1, long_duration_s=(600.0, 600.0)),
    # smoke-scale training: >= 5,000 train / 500 eval items, 22 long clips (10-30 min)
    "nano": Preset("nano", 5_200, 520, 18, 4, min_train=20, min_eval=4),
    # ~15x nano
    "full": Preset("full", 78_000, 7_800, 270, 60, min_train=300, min_eval=60),
}


def family_counts(preset: Preset, families: dict[str, Family]) -> dict[str, dict[str, int]]:
    """{split: {family: items}} for every family in ``families`` (registration order)."""
    short = [f for f in families.values() if not f.long]
    long_ = [f for f in families.values() if f.long]
    out: dict[str, dict[str, int]] = {}
    for split, total, minimum, long_total in (("train", preset.train_items, preset.min_train, preset.long_train),
                                              ("eval", preset.eval_items, preset.min_eval, preset.long_eval)):
        per_short = max(minimum, math.ceil(total / len(short))) if short else 0
        per_long = math.ceil(long_total / len(long_)) if long_ else 0
        out[split] = {f.name: per_long if f.long else per_short for f in families.values()}
    overrides = dict(preset.train_per_family)
    unknown = sorted(set(overrides) - set(families))
    if unknown:
        raise ValueError(f"preset {preset.name!r}: train_per_family names unknown famil{'y' if len(unknown) == 1 else 'ies'} "
                         f"{', '.join(unknown)}")
    for name, n in overrides.items():
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"preset {preset.name!r}: train_per_family[{name!r}] must be a count >= 0, got {n!r}")
        out["train"][name] = n
    return out


def load_families() -> dict[str, Family]:
    """``families.load_all()``, except that a family module that does not exist yet is skipped with a
    warning (modules are written by different people; an error *inside* a module still raises)."""
    for module in FAMILY_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            warnings.warn(f"family module {module} not found; its families are skipped", RuntimeWarning, stacklevel=2)
    return dict(FAMILIES)


# ----------------------------------------------------------------------------- report


@dataclass
class SynthReport:
    """What ``synthesize`` built; ``to_dict()`` is what synth_report.json holds."""

    out_dir: Path
    preset: str
    seed: int
    workers: int
    families: list[str]
    counts: dict[str, dict[str, int]]  # split -> family -> items
    audio_seconds: dict[str, float]  # split -> total seconds of audio
    long_clips: list[dict]  # {"id", "split", "family", "duration_s"}
    mc_eval_items: int
    disk_bytes: int
    tokenizer_vocab_size: int
    mean_text_tokens: dict[str, float]  # split -> mean chat-template text tokens per item (audio excluded)
    wall_time_s: float
    files: dict[str, str] = field(default_factory=dict)

    def total(self, split: str) -> int:
        return sum(self.counts.get(split, {}).values())

    @property
    def audio_hours(self) -> float:
        return sum(self.audio_seconds.values()) / 3600

    def to_dict(self) -> dict:
        return {
            "preset": self.preset, "seed": self.seed, "workers": self.workers,
            "wall_time_s": round(self.wall_time_s, 2),
            "totals": {s: self.total(s) for s in self.counts},
            "counts": self.counts,
            "audio_hours": {**{s: round(v / 3600, 4) for s, v in self.audio_seconds.items()},
                            "total": round(self.audio_hours, 4)},
            "long_clips": self.long_clips, "mc_eval_items": self.mc_eval_items,
            "disk_bytes": self.disk_bytes, "tokenizer_vocab_size": self.tokenizer_vocab_size,
            "mean_text_tokens": self.mean_text_tokens, "families": self.families, "files": self.files,
        }


# ----------------------------------------------------------------------------- atomic files


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_flac(path: Path, wave: np.ndarray) -> None:
    from afnext.data.sounds import write_flac

    tmp = _tmp_name(path)
    try:
        write_flac(tmp, wave)  # the container format is given explicitly, so the .tmp suffix is fine
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- one item


def item_id(family: str, split: str, index: int) -> str:
    return f"{family}_{split}_{index:06d}"


def _jsonable(x):
    """Labels as plain JSON: numpy scalars and arrays to Python numbers and lists, tuples to lists."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    return x


def validate_item(item: Item) -> None:
    """Raise ValueError unless ``item`` keeps the family contract (audio, turns, placeholders, MC fields)."""
    from afnext.data.manifest import PlaceholderError, conversations_to_sound_tokens

    if not item.audios:
        raise ValueError("no audio")
    for k, a in enumerate(item.audios, 1):
        if not isinstance(a, np.ndarray) or a.ndim != 1 or a.size < MIN_AUDIO_SAMPLES:
            raise ValueError(f"audio {k}: need a 1-D array of >= {MIN_AUDIO_SAMPLES} samples")
        if not np.isfinite(a).all():
            raise ValueError(f"audio {k}: non-finite samples")
    turns = item.conversations
    if not turns or len(turns) % 2 or any(t.get("from") != ("human", "gpt")[i % 2] for i, t in enumerate(turns)):
        raise ValueError("conversations must alternate human/gpt, starting with human and ending with gpt")
    if any(not isinstance(t.get("value"), str) or not t["value"].strip() for t in turns):
        raise ValueError("empty turn")
    try:
        conversations_to_sound_tokens(turns, len(item.audios))
    except PlaceholderError as e:
        raise ValueError(f"placeholders: {e}") from None
    extra = item.extra
    if "task" not in extra or "labels" not in extra:
        raise ValueError("extra must hold 'task' and 'labels'")
    if "choices" in extra:
        choices, answer = extra["choices"], extra.get("answer")
        if not isinstance(choices, list) or len(choices) < 2 or choices.count(answer) != 1:
            raise ValueError(f"MC answer {answer!r} must appear exactly once in choices {choices!r}")
        if len(set(choices)) != len(choices):
            raise ValueError(f"MC choices repeat: {choices!r}")
        if turns[-1]["value"] != answer:
            raise ValueError(f"MC gpt answer {turns[-1]['value']!r} is not the answer {answer!r}")
        for key in ("question", "category", "difficulty"):
            if not extra.get(key):
                raise ValueError(f"MC item without {key!r}")
        if extra["difficulty"] not in DIFFICULTIES:
            raise ValueError(f"difficulty {extra['difficulty']!r} not in {DIFFICULTIES}")


def build_record(item: Item, split: str, audio_dir: Path, out_dir: Path) -> dict:
    """Write the item's FLAC files and return its manifest record (paths relative to ``out_dir``)."""
    paths, durations = [], []
    for k, wave in enumerate(item.audios, 1):
        path = audio_dir / f"{item.id}_{k}.flac"
        atomic_write_flac(path, wave)
        paths.append(path.relative_to(out_dir).as_posix())
        durations.append(round(wave.size / SAMPLE_RATE, 4))
    extra = _jsonable(item.extra)
    rec = {"id": item.id, "sound": paths[0] if len(paths) == 1 else paths,
           "duration": durations[0] if len(durations) == 1 else durations,
           "conversations": [{"from": t["from"], "value": t["value"]} for t in item.conversations],
           "family": item.family, "split": split, "task": extra.pop("task"), "labels": extra.pop("labels")}
    rec.update({k: extra.pop(k) for k in MC_FIELDS if k in extra})
    rec.update(extra)  # anything else a family wants to keep
    return rec


_WORKER_STATE: dict = {}


def _init_worker(out_dir: str, seed: int, long_duration_s) -> None:
    families = load_families()
    _WORKER_STATE.update(out_dir=Path(out_dir), seed=seed, families=families)
    if long_duration_s is not None:
        from afnext.data.families import sound

        sound.LONG_DURATION_S = tuple(float(x) for x in long_duration_s)  # this process only; it ends with the run


def _run_chunk(chunk: list[tuple[str, str, int]]) -> list[dict]:
    out_dir, seed, families = _WORKER_STATE["out_dir"], _WORKER_STATE["seed"], _WORKER_STATE["families"]
    results = []
    for split, name, index in chunk:
        try:
            fam = families[name]
            item = fam.fn(item_seed(seed, split, name, index), index)
            item.id, item.family = item_id(name, split, index), name
            validate_item(item)
            rec = build_record(item, split, out_dir / "audio" / split / name, out_dir)
        except Exception as e:  # say which item failed; the traceback of a worker is otherwise lost
            raise RuntimeError(f"{name} {split} #{index}: {type(e).__name__}: {e}\n{traceback.format_exc()}") from None
        results.append({"split": split, "family": name, "index": index, "long": fam.long, "record": rec})
    return results


# ----------------------------------------------------------------------------- outputs


def mmau_record(rec: dict, families: dict[str, Family]) -> dict:
    """An MMAU-style record for a multiple-choice manifest record (MMAU's "task" is the domain)."""
    fam = families.get(rec["family"])
    skill = fam.skill if fam else "sound"
    domain = rec.get("domain") or ("speech" if skill == "speech" else "music" if skill == "music" else "sound")
    return {"id": rec["id"], "audio_id": rec["sound"], "sound": rec["sound"], "question": rec["question"],
            "choices": rec["choices"], "answer": rec["answer"], "dataset": DATASET_NAME, "task": domain,
            "split": "eval", "category": rec["category"], "sub-category": rec.get("sub_category") or rec["task"],
            "difficulty": rec["difficulty"], "family": rec["family"]}


def corpus_texts(records: list[dict]) -> list[str]:
    """Conversation text for tokenizer training: placeholders and think tags removed (they are added
    tokens, matched before BPE, so learning merges for them would waste vocabulary)."""
    return [_PLACEHOLDER.sub("", t["value"]) for rec in records for t in rec["conversations"]]


def train_corpus_tokenizer(records: list[dict], vocab_size: int = TOKENIZER_VOCAB):
    """BPE over the corpus text, the chat template's default system prompt and role names, and the family
    modules' ``VOCABULARY`` lists (rare names such as every note and key)."""
    from afnext.tokenizer_files import chat_template_text, train_bpe_tokenizer

    # The template's default system turn and the role names are in every rendered sample, so they are
    # counted once per record (BPE merges by frequency); otherwise the 430-character system prompt,
    # seen once, stays ~150 tokens long in every sample.
    m = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", chat_template_text("afnext"), re.S)
    scaffold = [m.group(1) if m else "", "system\n", "user\n", "assistant\n"]
    texts = corpus_texts(records) + scaffold * max(1, len(records))
    for module in FAMILY_MODULES:
        mod = sys.modules.get(module)
        texts += [str(w) for w in getattr(mod, "VOCABULARY", ())]
    return train_bpe_tokenizer(texts, vocab_size=vocab_size)


def write_tokenizer_dir(out_dir: Path, tok) -> Path:
    """Write the processor files (plus a minimal config.json) into a temporary directory, then rename each
    into ``out_dir/tokenizer``."""
    from afnext.tokenizer_files import write_minimal_config, write_tokenizer_files

    final = out_dir / "tokenizer"
    final.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tokenizer.", dir=out_dir))
    try:
        write_tokenizer_files(tmp, tok, kind="afnext")
        write_minimal_config(tmp, tok, kind="afnext")
        for f in sorted(tmp.iterdir()):
            os.replace(f, final / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def mean_text_tokens(records: list[dict], tokenizer_dir: Path) -> float:
    """Mean chat-template text tokens per record (each placeholder counted as one token)."""
    from afnext.data.tokenize import ROLES
    from afnext.processor import Processor, render_chat_template

    if not records:
        return 0.0
    proc = Processor.from_pretrained(tokenizer_dir)
    texts = [render_chat_template(proc.chat_template, [{"role": ROLES[t["from"]], "content": re.sub(
        r"<sound-\d+>", "<sound>", t["value"])} for t in rec["conversations"]], add_generation_prompt=False,
        **proc.tokenizer.special_tokens_map) for rec in records]
    return float(np.mean([len(ids) for ids in proc.tokenizer.encode_batch(texts)]))


def registry_toml(preset: str, seed: int) -> str:
    return (f"# afnext synthetic corpus (preset {preset}, seed {seed}); paths are relative to this file\n\n"
            '[datasets.train]\nmanifest = "train.jsonl"\n\n[datasets.eval]\nmanifest = "eval.jsonl"\n')


def _prune(out_dir: Path, produced: dict[tuple[str, str], set[str]]) -> int:
    """Delete FLAC files and temporaries that this run did not produce in the directories it rebuilt."""
    removed = 0
    for (split, name), keep in produced.items():
        d = out_dir / "audio" / split / name
        for f in d.iterdir() if d.is_dir() else ():
            stale_tmp = f.name.startswith(".") and f.name.endswith(".tmp")
            if stale_tmp or (f.suffix == ".flac" and f.name not in keep):
                f.unlink(missing_ok=True)
                removed += 1
    return removed


def _disk_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


# ----------------------------------------------------------------------------- progress


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:6.1f} items/s" if task.speed else "    -- items/s")

    return Progress(TextColumn("[bold]{task.description:>5}"), BarColumn(), MofNCompleteColumn(), Rate(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not enabled, transient=False)


# ----------------------------------------------------------------------------- main entry


def synthesize(out_dir, preset: str | Preset = "nano", seed: int = 0, workers: int | None = None,
               families: list[str] | None = None, progress: bool = True,
               tokenizer_vocab: int = TOKENIZER_VOCAB) -> SynthReport:
    """Build the corpus into ``out_dir`` (see the module docstring) and return its report.

    ``preset``: "micro" | "nano" | "full" or a ``Preset``. ``workers``: processes (default: CPU count).
    ``families``: names to build (default all registered); unknown names raise ValueError.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    registry = load_families()
    if not registry:
        raise ValueError("no task families are registered")
    counts = family_counts(preset, registry)
    if families is not None:
        unknown = [f for f in families if f not in registry]
        if unknown:
            raise ValueError(f"unknown famil{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
                             f"known: {', '.join(registry)}")
        counts = {s: {f: n for f, n in c.items() if f in families} for s, c in counts.items()}
    chosen = [f for f in registry if f in counts["train"]]
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = max(1, int(workers))

    # Long items first, each alone; short ones in chunks.
    long_tasks = [(s, f, i) for s in SPLITS for f in chosen if registry[f].long for i in range(counts[s][f])]
    short = [(s, f, i) for s in SPLITS for f in chosen if not registry[f].long for i in range(counts[s][f])]
    chunks = [[t] for t in long_tasks] + [short[i:i + CHUNK_ITEMS] for i in range(0, len(short), CHUNK_ITEMS)]
    for s in SPLITS:
        for f in chosen:
            if counts[s][f]:
                (out_dir / "audio" / s / f).mkdir(parents=True, exist_ok=True)

    results: list[dict] = []
    ctx = mp.get_context("spawn")
    saved_env = {k: os.environ.get(k) for k in _WORKER_ENV}
    os.environ.update(_WORKER_ENV)  # inherited by the spawned workers at start-up
    try:
        with _progress(progress) as bar, ctx.Pool(workers, _init_worker,
                                                  (str(out_dir), seed, preset.long_duration_s)) as pool:
            tasks = {s: bar.add_task(s, total=sum(counts[s].values())) for s in SPLITS}
            for batch in pool.imap_unordered(_run_chunk, chunks, chunksize=1):
                results += batch
                for s, n in Counter(r["split"] for r in batch).items():
                    bar.advance(tasks[s], n)
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    order = {f: i for i, f in enumerate(chosen)}
    results.sort(key=lambda r: (SPLITS.index(r["split"]), order[r["family"]], r["index"]))
    records = {s: [r["record"] for r in results if r["split"] == s] for s in SPLITS}
    produced: dict[tuple[str, str], set[str]] = {(s, f): set() for s in SPLITS for f in chosen if counts[s][f]}
    for r in results:
        sounds = r["record"]["sound"]
        names = [Path(p).name for p in ([sounds] if isinstance(sounds, str) else sounds)]
        produced[(r["split"], r["family"])].update(names)
    _prune(out_dir, produced)

    from afnext.data.manifest import write_manifest

    files = {}  # relative to out_dir, so the report stays true when the corpus directory moves
    for s in SPLITS:
        write_manifest(out_dir / f"{s}.jsonl", records[s], jsonl=True)
        files[s] = f"{s}.jsonl"
    mc = [mmau_record(rec, registry) for rec in records["eval"] if "choices" in rec]
    atomic_write_text(out_dir / "eval_mc.json", json.dumps(mc, ensure_ascii=False, indent=1) + "\n")
    atomic_write_text(out_dir / "registry.toml", registry_toml(preset.name, seed))
    tok = train_corpus_tokenizer(records["train"] + records["eval"], tokenizer_vocab)
    tok_dir = write_tokenizer_dir(out_dir, tok)
    files.update(eval_mc="eval_mc.json", registry="registry.toml", tokenizer=tok_dir.name, report="synth_report.json")

    def seconds(rec):
        d = rec["duration"]
        return float(sum(d)) if isinstance(d, list) else float(d)

    report = SynthReport(
        out_dir=out_dir, preset=preset.name, seed=seed, workers=workers, families=chosen,
        counts={s: {f: counts[s][f] for f in chosen} for s in SPLITS},
        audio_seconds={s: sum(seconds(rec) for rec in records[s]) for s in SPLITS},
        long_clips=[{"id": r["record"]["id"], "split": r["split"], "family": r["family"],
                     "duration_s": seconds(r["record"])} for r in results if r["long"]],
        mc_eval_items=len(mc), disk_bytes=0, tokenizer_vocab_size=tok.get_vocab_size(),
        mean_text_tokens={s: round(mean_text_tokens(records[s], tok_dir), 2) for s in SPLITS},
        wall_time_s=0.0, files=files)
    report.disk_bytes = _disk_bytes(out_dir)
    report.wall_time_s = time.perf_counter() - t0
    atomic_write_text(out_dir / "synth_report.json", json.dumps(report.to_dict(), indent=1) + "\n")
    return report
