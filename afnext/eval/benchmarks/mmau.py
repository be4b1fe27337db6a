"""MMAU test-mini (v05.15.25): 1000 multiple-choice questions over sound, music and speech.

Data. `data_dir` is the directory holding the official metadata JSON (`mmau-test-mini.json`, or the
only `*.json` there) and the `test-mini-audios/` folder; `data_dir` may also be the JSON file itself.
Each record's `audio_id` ("./test-mini-audios/<id>.wav") is resolved against that directory. Loading
reads metadata only; the audio is needed only for inference.

Prompt. `PROMPT_TEMPLATE` is OURS: we have not found the exact prompt the AF-Next authors used for
MMAU. It lists the choices as "(A) ..." lines and asks for the option text, which MMAU's
string-match rule needs (a bare letter contains no answer token and is scored wrong).

Scoring. MMAU's official rule (`afnext.eval.metrics.mmau_is_correct`): reasoning (`<think>...</think>`)
is stripped, then the prediction must contain every token of the answer and no token of a wrong
choice. An item without a prediction is wrong (and listed under "missing"). Breakdowns by task,
difficulty, category and sub-category; a record whose `category` is a list counts in each of its
categories, so category counts can sum to more than the item count (task and difficulty sum exactly).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from afnext.eval.benchmarks import EvalItem, accuracy_entry, find_metadata, register
from afnext.eval.metrics import mmau_is_correct

DEFAULT_FILE = "mmau-test-mini.json"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
PROMPT_TEMPLATE = "{question}\n{choices}\nAnswer with the text of the correct option."


def format_prompt(question: str, choices: list[str]) -> str:
    lines = "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))
    return PROMPT_TEMPLATE.format(question=question.strip(), choices=lines)


def _as_list(value) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def resolve_metadata(data_dir: str | Path) -> Path:
    return find_metadata(data_dir, DEFAULT_FILE, ".json", "MMAU")


class MMAU:
    name = "mmau"
    paper_key = "mmau"

    def load(self, data_dir: str | Path, limit: int | None = None) -> list[EvalItem]:
        path = resolve_metadata(data_dir)
        records = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(records, list):
            raise ValueError(f"{path}: expected a JSON list of MMAU records")
        root = path.parent
        items = []
        for k, r in enumerate(records[:limit] if limit is not None else records):
            missing = [f for f in ("id", "question", "choices", "answer") if f not in r]
            if missing:
                raise ValueError(f"{path}: record {k} lacks {', '.join(missing)}")
            audio_id = r.get("audio_id") or f"./test-mini-audios/{r['id']}.wav"
            ref = {"answer": r["answer"], "choices": list(r["choices"]), "task": r.get("task", "unknown"),
                   "difficulty": r.get("difficulty", "unknown"), "category": _as_list(r.get("category")),
                   "sub-category": _as_list(r.get("sub-category"))}
            items.append(EvalItem(str(r["id"]), (root / audio_id,), format_prompt(r["question"], r["choices"]), ref))
        ids = [it.id for it in items]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{path}: duplicate ids")
        return items

    def score(self, items: list[EvalItem], predictions: dict[str, str]) -> dict:
        hits: dict[str, bool] = {}
        for it in items:
            pred = predictions.get(it.id)
            hits[it.id] = pred is not None and mmau_is_correct(pred, it.reference["answer"], it.reference["choices"])
        breakdowns: dict[str, dict] = {}
        for axis in ("task", "difficulty", "category", "sub-category"):
            groups: dict[str, list[bool]] = defaultdict(list)
            for it in items:
                for g in _as_list(it.reference.get(axis)) or ["unknown"]:
                    groups[g].append(hits[it.id])
            breakdowns[axis] = {g: accuracy_entry(h) for g, h in sorted(groups.items())}
        overall = accuracy_entry(list(hits.values()))
        return {"benchmark": self.name, "n": len(items),
                "missing": sorted(it.id for it in items if it.id not in predictions),
                "headline": {"accuracy": {"value": overall["accuracy"], "n": overall["n"], "correct": overall["correct"]}},
                "breakdowns": breakdowns}


register(MMAU())
