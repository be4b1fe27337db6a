"""The synthetic benchmark (held-out items of afnext.data.synth) behind the Benchmark protocol.

`data_dir` is a synth output directory (its `eval.jsonl` is read) or a manifest file. Items keep the
order of `afnext.eval.synthetic.load_items` (grouped by family); `limit` caps items per family, as
`load_items` does, so a small run still covers every family. The prompt is the human turn with its
`<sound-k>` placeholders bound to audio order. Scoring is `afnext.eval.synthetic.score`, unchanged;
its per-family entries become the "family" breakdown. A missing prediction is scored as "".
"""

from __future__ import annotations

from pathlib import Path

from afnext.data.manifest import conversations_to_sound_tokens
from afnext.eval import synthetic as S
from afnext.eval.benchmarks import EvalItem, register


def resolve_manifest(data_dir: str | Path) -> Path:
    p = Path(data_dir)
    if p.is_file():
        return p
    if (p / "eval.jsonl").is_file():
        return p / "eval.jsonl"
    raise FileNotFoundError(f"{p}: no eval.jsonl (a synth output directory or a manifest file is expected)")


class Synthetic:
    name = "synthetic"
    paper_key = None  # our own benchmark: no paper figures

    def load(self, data_dir: str | Path, limit: int | None = None) -> list[EvalItem]:
        records = S.load_items(resolve_manifest(data_dir), limit_per_family=limit)
        items = []
        for r in records:
            turns, order = conversations_to_sound_tokens(r.conversations, len(r.sounds))
            items.append(EvalItem(r.id, tuple(Path(r.sounds[i]) for i in order), turns[0]["value"], {"record": r}))
        return items

    def score(self, items: list[EvalItem], predictions: dict[str, str]) -> dict:
        records = [it.reference["record"] for it in items]
        raw = S.score(records, [predictions.get(it.id, "") for it in items])
        return {"benchmark": self.name, "n": len(items),
                "missing": sorted(it.id for it in items if it.id not in predictions),
                "headline": raw["headline"], "breakdowns": {"family": raw["families"]}}


register(Synthetic())
