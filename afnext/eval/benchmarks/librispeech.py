"""LibriSpeech test-clean / test-other: English ASR scored by corpus WER (registered once per split).

Data. Two layouts are read:

- The original OpenSLR release: `<root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`
  with one `<speaker>-<chapter>.trans.txt` per chapter whose lines are "ID TRANSCRIPT". `data_dir` may
  be `<root>` (holding `test-clean/`, or `LibriSpeech/test-clean/` as the tarball unpacks), or the
  split directory itself. Loading reads transcripts only; the FLACs are needed only for inference.
- Hugging Face parquet (e.g. `openslr/librispeech_asr`), when `pyarrow` is installed: columns `id`,
  `text` and `audio` (a struct with `bytes` and/or `path`) or `file`. `data_dir` may be one parquet
  file or a directory; in a directory, parquet files under `<split>/` are used if any, else every
  parquet file whose path names the split's variant ("clean"/"other"), else all of them. The audio
  lives inside the parquet, and EvalItems carry file paths, so loading writes each utterance's bytes
  once to `<parquet dir>/.afnext_audio/<split>/<id><ext>` (skipped when the file exists). A row
  without bytes uses its `file`/`audio.path` resolved against the parquet's directory.

Prompt. `PROMPT` is Audio Flamingo's ASR instruction, "Transcribe the input speech." (as our design
brief gives it; not yet checked against the AF-Next authors' evaluation code).

Scoring. Corpus WER as the paper reports it: reference and hypothesis both go through Whisper's
English text normaliser (`afnext.eval.normalizers`), word-level edit distances are summed over the
split and divided by the total number of reference words (not a mean of per-utterance WERs). Before
normalising, a hypothesis loses (1) reasoning (`<think>...</think>`) and (2) AF's assistant framing
`The spoken content of the audio is "<text>".` -- the model wraps transcripts in that sentence, and
scoring the wrapper would add ~7 insertions per utterance. Only that exact sentence (any case, straight
or curly quotes, optional trailing period) is unwrapped; anything else is scored as written. An item
without a prediction is scored as an empty hypothesis (all deletions) and listed under "missing".
Breakdown by speaker (the per-speaker corpus WER).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from afnext.eval.benchmarks import EvalItem, register
from afnext.eval.metrics import edit_distance, strip_reasoning
from afnext.eval.normalizers import english_words

PROMPT = "Transcribe the input speech."
SPLITS = ("test-clean", "test-other")
AUDIO_CACHE = ".afnext_audio"

# AF's ASR answers read: The spoken content of the audio is "<transcript>".
_FRAMING = re.compile(r'^\s*the spoken content of the audio is\s*:?\s*["\u201c](.*)["\u201d]\s*\.?\s*$',
                      re.IGNORECASE | re.DOTALL)


def strip_framing(prediction: str) -> str:
    """The transcript inside AF's framing sentence; the text unchanged if it is not so framed."""
    text = strip_reasoning(prediction or "")
    m = _FRAMING.match(text)
    return m.group(1) if m else text


# ----------------------------------------------------------------------------- original layout

def _split_dir(data_dir: Path, split: str) -> Path | None:
    """The directory holding `split`'s speaker folders, or None if this is not the original layout."""
    for cand in (data_dir / split, data_dir / "LibriSpeech" / split, data_dir):
        if cand.is_dir() and next(cand.glob("*/*/*.trans.txt"), None) is not None:
            return cand
    return None


def _read_original(split_dir: Path, limit: int | None) -> list[EvalItem]:
    items: list[EvalItem] = []
    # Sorted by path so item order (and thus `limit` and sharding) is stable across filesystems.
    for trans in sorted(split_dir.glob("*/*/*.trans.txt")):
        for k, line in enumerate(trans.read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            if uid.count("-") != 2:
                raise ValueError(f"{trans}:{k + 1}: expected 'SPEAKER-CHAPTER-UTT TRANSCRIPT', got {line!r}")
            items.append(_item(uid, trans.parent / f"{uid}.flac", text))
            if limit is not None and len(items) >= limit:
                return items
    return items


def _item(uid: str, audio: Path, text: str, speaker: str | None = None) -> EvalItem:
    speaker = speaker or uid.split("-")[0]
    return EvalItem(uid, (audio,), PROMPT, {"text": text.strip(), "speaker": str(speaker)})


# ----------------------------------------------------------------------------- parquet layout

def _parquet_files(data_dir: Path, split: str) -> list[Path]:
    if data_dir.is_file():
        return [data_dir] if data_dir.suffix == ".parquet" else []
    if (data_dir / split).is_dir():
        files = sorted((data_dir / split).rglob("*.parquet"))
        if files:
            return files
    files = sorted(data_dir.rglob("*.parquet"))
    variant = split.split("-")[-1]  # "clean" / "other"
    named = [f for f in files if variant in str(f.relative_to(data_dir)).lower()]
    return named or files


def _read_parquet(files: list[Path], split: str, limit: int | None) -> list[EvalItem]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError("reading LibriSpeech parquet needs pyarrow: pip install pyarrow") from e
    items: list[EvalItem] = []
    for f in files:
        cache = f.parent / AUDIO_CACHE / split
        pf = pq.ParquetFile(f)
        cols = [c for c in ("id", "text", "audio", "file", "speaker_id") if c in pf.schema_arrow.names]
        if "text" not in cols:
            raise ValueError(f"{f}: no 'text' column (columns: {pf.schema_arrow.names})")
        for batch in pf.iter_batches(batch_size=256, columns=cols):  # bounded memory: rows carry audio bytes
            for row in batch.to_pylist():
                items.append(_parquet_item(row, f, cache))
                if limit is not None and len(items) >= limit:
                    return items
    return items


def _parquet_item(row: dict, parquet: Path, cache: Path) -> EvalItem:
    audio = row.get("audio") or {}
    if not isinstance(audio, dict):
        audio = {"path": str(audio)}
    src = row.get("file") or audio.get("path")
    uid = row.get("id") or (Path(src).stem if src else None)
    if not uid:
        raise ValueError(f"{parquet}: a row has neither 'id' nor an audio path to name it")
    uid = str(uid)
    if audio.get("bytes"):
        ext = Path(audio.get("path") or "").suffix or ".flac"
        path = cache / f"{uid}{ext}"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_bytes(audio["bytes"])
            tmp.replace(path)  # atomic: a killed load never leaves a truncated file that looks complete
    elif src:
        path = Path(src) if Path(src).is_absolute() else parquet.parent / src
    else:
        raise ValueError(f"{parquet}: row {uid} has no audio bytes and no path")
    speaker = row.get("speaker_id")
    return _item(uid, path, row["text"], None if speaker is None else str(speaker))


# ----------------------------------------------------------------------------- benchmark

class LibriSpeech:
    def __init__(self, split: str):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.split = split
        self.name = self.paper_key = f"librispeech-{split}"

    def load(self, data_dir: str | Path, limit: int | None = None) -> list[EvalItem]:
        root = Path(data_dir)
        split_dir = _split_dir(root, self.split) if root.is_dir() else None
        if split_dir is not None:
            items = _read_original(split_dir, limit)
        else:
            files = _parquet_files(root, self.split) if root.exists() else []
            if not files:
                raise FileNotFoundError(f"{root}: neither LibriSpeech {self.split} in the original layout "
                                        "(<split>/<speaker>/<chapter>/*.trans.txt) nor parquet files")
            items = _read_parquet(files, self.split, limit)
        ids = [it.id for it in items]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{root}: duplicate utterance ids")
        return items

    def score(self, items: list[EvalItem], predictions: dict[str, str]) -> dict:
        per_speaker: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # items, errors, words
        for it in items:
            ref = english_words(it.reference["text"])
            hyp = english_words(strip_framing(predictions.get(it.id, "")))
            acc = per_speaker[it.reference.get("speaker", "unknown")]
            acc[0] += 1
            acc[1] += edit_distance(ref, hyp)
            acc[2] += len(ref)
        errors = sum(a[1] for a in per_speaker.values())
        words = sum(a[2] for a in per_speaker.values())
        return {"benchmark": self.name, "n": len(items),
                "missing": sorted(it.id for it in items if it.id not in predictions),
                "headline": {"wer": {"value": errors / words if words else 0.0, "n": len(items),
                                     "errors": errors, "words": words}},
                "breakdowns": {"speaker": {s: {"n": n, "wer": e / w if w else 0.0, "errors": e, "words": w}
                                           for s, (n, e, w) in sorted(per_speaker.items())}}}


TEST_CLEAN = register(LibriSpeech("test-clean"))
TEST_OTHER = register(LibriSpeech("test-other"))
