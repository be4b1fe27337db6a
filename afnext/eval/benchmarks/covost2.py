"""CoVoST2 speech translation: corpus sacreBLEU per language pair (registered once per pair).

Data. The CoVoST2 TSV release (as `get_covost_splits.py` writes it): `covost_v2.<src>_<tgt>.test.tsv`,
tab-separated, unquoted (the release writes with `QUOTE_NONE`, so quotes are literal characters), with a
header naming at least `path`, `sentence`, `translation` (`client_id` is kept when present). The audio
is Common Voice's: `path` names an mp3 under the Common Voice `clips/` folder. `data_dir` may be

- the TSV file itself, or
- a directory holding the pair's TSV (`covost_v2.<pair>.test.tsv`, else `covost_v2.<pair>.tsv` whose
  rows are filtered to `split == test` when it has a split column).

Clips are resolved against `<dir>/clips/` where `<dir>` is the TSV's directory (link or copy the
Common Voice `clips/` folder there). Loading reads the TSV only; the mp3s are needed only for inference.
An item's id is the clip name without extension (Common Voice names are unique per language).

Prompt. `PROMPT_TEMPLATE` ("Translate the speech into {target}.") is OURS: we have not found the exact
instruction the AF-Next authors used for CoVoST2. `{target}` is the target language's English name.

Scoring. Corpus BLEU with `sacrebleu.corpus_bleu(hyps, [refs], tokenize=...)` (one reference per
segment), the tokenizer chosen by target language as is standard for CoVoST2: "zh" for Chinese
targets, "ja-mecab" for Japanese (needs `sacrebleu[ja]`: mecab-python3 + ipadic), "13a" otherwise.
A hypothesis is the prediction with reasoning (`<think>...</think>`) removed and outer whitespace
stripped, nothing else (no unwrapping of framing sentences: we have not seen AF-Next frame its
translations). An empty prediction is an empty hypothesis, and so is a missing one (listed under
"missing"): both stay in the corpus, so they cost reference length (brevity penalty) instead of being
silently dropped. The report carries sacreBLEU's signature so the number can be reproduced.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from afnext.eval.benchmarks import EvalItem, register
from afnext.eval.metrics import strip_reasoning

PROMPT_TEMPLATE = "Translate the speech into {target}."

# CoVoST2 language codes -> English names (the 21 X->en sources and 15 en->X targets).
LANGUAGES = {
    "en": "English", "fr": "French", "de": "German", "es": "Spanish", "ca": "Catalan", "it": "Italian",
    "ru": "Russian", "zh-CN": "Chinese", "pt": "Portuguese", "fa": "Persian", "et": "Estonian",
    "mn": "Mongolian", "nl": "Dutch", "tr": "Turkish", "ar": "Arabic", "sv-SE": "Swedish", "lv": "Latvian",
    "sl": "Slovenian", "ta": "Tamil", "ja": "Japanese", "id": "Indonesian", "cy": "Welsh",
}
X_TO_EN = ("fr", "de", "es", "ca", "it", "ru", "zh-CN", "pt", "fa", "et", "mn", "nl", "tr", "ar", "sv-SE",
           "lv", "sl", "ta", "ja", "id", "cy")
EN_TO_X = ("de", "ca", "zh-CN", "fa", "et", "mn", "tr", "ar", "sv-SE", "lv", "sl", "ta", "ja", "id", "cy")
PAIRS = tuple(f"{x}_en" for x in X_TO_EN) + tuple(f"en_{x}" for x in EN_TO_X)

JA_EXTRA = "sacrebleu[ja]"


def split_pair(pair: str) -> tuple[str, str]:
    """"en_zh-CN" -> ("en", "zh-CN"); ValueError for a malformed pair or an unknown language."""
    src, sep, tgt = pair.partition("_")
    if not sep or src not in LANGUAGES or tgt not in LANGUAGES:
        raise ValueError(f"bad CoVoST2 pair {pair!r}: expected <src>_<tgt> over {', '.join(LANGUAGES)}")
    return src, tgt


def tokenizer_for(target: str) -> str:
    """sacreBLEU tokenizer for a target language code: "zh" (Chinese), "ja-mecab" (Japanese), else "13a"."""
    base = target.split("-")[0].lower()
    if base == "zh":
        return "zh"
    if base == "ja":
        return "ja-mecab"
    return "13a"


def format_prompt(target: str) -> str:
    return PROMPT_TEMPLATE.format(target=LANGUAGES.get(target, target))


def _sacrebleu():
    try:
        import sacrebleu
    except ImportError as e:
        raise ImportError("CoVoST2 scoring needs sacrebleu (pip install sacrebleu)") from e
    return sacrebleu


def check_tokenizer(tokenize: str) -> None:
    """Raise ImportError naming the pip extra when `tokenize` needs packages that are missing."""
    if tokenize != "ja-mecab":
        return
    try:
        import ipadic  # noqa: F401
        import MeCab  # noqa: F401
    except ImportError as e:
        raise ImportError(f"tokenizer ja-mecab (Japanese targets) needs mecab-python3 and ipadic: "
                          f"pip install \"{JA_EXTRA}\"") from e


def corpus_bleu(hypotheses: list[str], references: list[str], tokenize: str):
    """sacreBLEU corpus BLEU with one reference per segment; returns the BLEU object."""
    sacrebleu = _sacrebleu()
    check_tokenizer(tokenize)
    if len(hypotheses) != len(references):
        raise ValueError("hypotheses and references differ in length")
    return sacrebleu.corpus_bleu(hypotheses, [references], tokenize=tokenize)


def hypothesis(prediction: str | None) -> str:
    """The text scored for one prediction: reasoning removed, outer whitespace stripped ("" if None)."""
    return strip_reasoning(prediction or "").strip()


def resolve_tsv(data_dir: str | Path, pair: str) -> tuple[Path, bool]:
    """(TSV path, whether its rows must be filtered to split == test)."""
    p = Path(data_dir)
    if p.is_file():
        return p, True
    for name, filt in ((f"covost_v2.{pair}.test.tsv", False), (f"covost_v2.{pair}.tsv", True)):
        if (p / name).is_file():
            return p / name, filt
    raise FileNotFoundError(f"{p}: no covost_v2.{pair}.test.tsv (or covost_v2.{pair}.tsv) for CoVoST2 {pair}")


def read_tsv(path: Path) -> list[dict]:
    # The release is written unquoted; csv's default quoting would swallow sentences with quotes.
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows


class CoVoST2:
    """One CoVoST2 language pair, e.g. CoVoST2("en_ar"); registered as "covost2-<pair>"."""

    def __init__(self, pair: str):
        self.source, self.target = split_pair(pair)
        self.pair = pair
        self.name = f"covost2-{pair}"
        self.tokenize = tokenizer_for(self.target)
        # Keys of afnext/eval/paper_numbers.json; only en_ar has a paper number ("covost2-en-ar").
        self.paper_key = f"covost2-{self.source}-{self.target}".lower()

    def load(self, data_dir: str | Path, limit: int | None = None) -> list[EvalItem]:
        path, filter_split = resolve_tsv(data_dir, self.pair)
        rows = read_tsv(path)
        if rows:
            missing = [f for f in ("path", "sentence", "translation") if f not in rows[0]]
            if missing:
                raise ValueError(f"{path}: header lacks {', '.join(missing)}")
        if filter_split and rows and "split" in rows[0]:
            rows = [r for r in rows if r["split"] == "test"]
        if limit is not None:
            rows = rows[:limit]
        clips = path.parent / "clips"
        prompt = format_prompt(self.target)
        items = []
        for r in rows:
            ref = {"translation": r["translation"], "sentence": r["sentence"], "client_id": r.get("client_id", ""),
                   "pair": self.pair}
            items.append(EvalItem(Path(r["path"]).stem, (clips / r["path"],), prompt, ref))
        ids = [it.id for it in items]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{path}: duplicate clip paths")
        return items

    def score(self, items: list[EvalItem], predictions: dict[str, str]) -> dict:
        hyps = [hypothesis(predictions.get(it.id)) for it in items]
        refs = [it.reference["translation"] for it in items]
        entry = {"value": 0.0, "n": 0, "tokenize": self.tokenize}
        if items:
            sacrebleu = _sacrebleu()
            check_tokenizer(self.tokenize)
            # The metric object (not the corpus_bleu shortcut) so the signature matches the score.
            metric = sacrebleu.BLEU(tokenize=self.tokenize)
            bleu = metric.corpus_score(hyps, [refs])
            entry.update(value=float(bleu.score), n=len(items), signature=str(metric.get_signature()),
                         bp=float(bleu.bp), sys_len=int(bleu.sys_len), ref_len=int(bleu.ref_len))
        return {"benchmark": self.name, "n": len(items),
                "missing": sorted(it.id for it in items if it.id not in predictions),
                "headline": {"bleu": entry},
                "breakdowns": {"empty_hypotheses": {"all": {"n": sum(1 for h in hyps if not h)}}}}


COVOST2 = {pair: register(CoVoST2(pair)) for pair in PAIRS}
