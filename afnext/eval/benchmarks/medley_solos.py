"""Medley-Solos-DB: 8-class solo-instrument recognition, scored by accuracy on the test subset.

Data. `data_dir` is the directory holding the metadata CSV (`Medley-solos-DB_metadata.csv`, or the
only `*.csv` there; `data_dir` may also be the CSV itself) with columns subset, instrument,
instrument_id, song_id, uuid4. Clips are `Medley-solos-DB_<subset>-<instrument_id>_<uuid4>.wav`,
looked up in `<csv dir>/audio/` when that folder exists (mirdata's layout), else next to the CSV.
Only rows of `subset` ("test" by default; 12,236 clips in the release) become items, in file order,
with the uuid4 as the id. Loading reads metadata only.

Prompt. `PROMPT` is OURS (the AF-Next authors' Medley-Solos prompt is not public): it asks which
instrument is playing and lists the 8 classes, so an answer can name a class verbatim.

Scoring. A prediction is reduced to the set of classes it names, and is correct iff that set is exactly
{reference}. So an answer naming two classes ("piano or violin", "not piano, violin") is wrong, and so
is one naming none. To find names, reasoning (`<think>...</think>`) is stripped, the text is lowercased,
every non-alphanumeric character becomes a space, and each phrase of `SYNONYMS` is searched as whole
words (an optional plural "s" allowed). The table is small and exact, not fuzzy:

- each class name itself ("tenor saxophone", "distorted electric guitar", ...);
- "sax"/"saxophone"/"tenor sax" -> tenor saxophone (the only reed-brass class besides clarinet);
- "electric guitar"/"distorted guitar" -> distorted electric guitar (plain "guitar" is NOT accepted:
  "acoustic guitar" would then count as right);
- "singer"/"vocals"/"voice"/"singing"/"female vocals"/"female voice" -> female singer, the only voice class;
- "fiddle" -> violin, "pianoforte" -> piano.

"male singer"/"male voice"/"male vocals" name a class outside the 8 (`OTHER`), so "male singer" (which
also contains "singer") is wrong rather than read as the female-singer class. An item without a
prediction is wrong and listed under "missing". Breakdowns: accuracy per reference instrument, and the
count of items per predicted label ("<none>" when no class is named, "<multiple>" when several are).
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

from afnext.eval.benchmarks import EvalItem, accuracy_entry, find_metadata, register
from afnext.eval.metrics import strip_reasoning

DEFAULT_FILE = "Medley-solos-DB_metadata.csv"
# Index = instrument_id in the metadata.
CLASSES = ("clarinet", "distorted electric guitar", "female singer", "flute", "piano", "tenor saxophone",
           "trumpet", "violin")
OTHER = "<other>"
PROMPT = ("Which instrument is playing in this audio? Choose one of: " + ", ".join(CLASSES) + ". "
          "Answer with the instrument name only.")

SYNONYMS: dict[str, str] = {c: c for c in CLASSES} | {
    "sax": "tenor saxophone", "saxophone": "tenor saxophone", "tenor sax": "tenor saxophone",
    "electric guitar": "distorted electric guitar", "distorted guitar": "distorted electric guitar",
    "singer": "female singer", "vocals": "female singer", "voice": "female singer", "singing": "female singer",
    "female vocals": "female singer", "female voice": "female singer",
    "fiddle": "violin", "pianoforte": "piano",
    "male singer": OTHER, "male voice": OTHER, "male vocals": OTHER,
}
# One alternation, longest phrase first so e.g. "tenor saxophone" is taken whole (all its sub-phrases
# map to the same class anyway; the order only keeps matches readable when debugging).
_PHRASES = re.compile(r"\b(" + "|".join(re.escape(p) for p in sorted(SYNONYMS, key=len, reverse=True)) + r")s?\b")


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def named_classes(prediction: str) -> set[str]:
    """The labels (classes of `CLASSES`, or `OTHER`) that `prediction` names."""
    text = _normalise(strip_reasoning(prediction or ""))
    # finditer does not overlap: "male singer" consumes its "singer", so it yields OTHER alone.
    return {SYNONYMS[m.group(1)] for m in _PHRASES.finditer(text)}


def predicted_label(prediction: str) -> str:
    """The single class named, else "<none>" or "<multiple>" (OTHER counts as a label)."""
    named = named_classes(prediction)
    return next(iter(named)) if len(named) == 1 else ("<none>" if not named else "<multiple>")


def is_correct(prediction: str, instrument: str) -> bool:
    return named_classes(prediction) == {instrument}


def resolve_metadata(data_dir: str | Path) -> Path:
    return find_metadata(data_dir, DEFAULT_FILE, ".csv", "Medley-Solos-DB")


class MedleySolos:
    name = "medley-solos-db"
    paper_key = "medley-solos-db"

    def __init__(self, subset: str = "test"):
        self.subset = subset

    def load(self, data_dir: str | Path, limit: int | None = None) -> list[EvalItem]:
        path = resolve_metadata(data_dir)
        audio_dir = path.parent / "audio" if (path.parent / "audio").is_dir() else path.parent
        items: list[EvalItem] = []
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            need = {"subset", "instrument", "instrument_id", "uuid4"}
            if not need <= set(reader.fieldnames or ()):
                raise ValueError(f"{path}: columns {reader.fieldnames} lack {sorted(need - set(reader.fieldnames or ()))}")
            for k, row in enumerate(reader):
                if row["subset"].strip() != self.subset:
                    continue
                inst, iid = row["instrument"].strip().lower(), int(row["instrument_id"])
                if inst not in CLASSES or CLASSES.index(inst) != iid:
                    raise ValueError(f"{path}: row {k + 2}: instrument {inst!r} / id {iid} not one of {CLASSES}")
                uuid = row["uuid4"].strip()
                wav = audio_dir / f"Medley-solos-DB_{self.subset}-{iid}_{uuid}.wav"
                items.append(EvalItem(uuid, (wav,), PROMPT,
                                      {"instrument": inst, "instrument_id": iid, "song_id": row.get("song_id", "")}))
                if limit is not None and len(items) >= limit:
                    break
        ids = [it.id for it in items]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{path}: duplicate uuid4 values")
        return items

    def score(self, items: list[EvalItem], predictions: dict[str, str]) -> dict:
        by_class: dict[str, list[bool]] = defaultdict(list)
        predicted: dict[str, int] = defaultdict(int)
        hits = []
        for it in items:
            pred = predictions.get(it.id)
            ok = pred is not None and is_correct(pred, it.reference["instrument"])
            hits.append(ok)
            by_class[it.reference["instrument"]].append(ok)
            predicted["<missing>" if pred is None else predicted_label(pred)] += 1
        overall = accuracy_entry(hits)
        return {"benchmark": self.name, "n": len(items),
                "missing": sorted(it.id for it in items if it.id not in predictions),
                "headline": {"accuracy": {"value": overall["accuracy"], "n": overall["n"], "correct": overall["correct"]}},
                "breakdowns": {"instrument": {c: accuracy_entry(by_class[c]) for c in CLASSES if c in by_class},
                               "predicted": {g: {"n": n} for g, n in sorted(predicted.items())}}}


register(MedleySolos())
