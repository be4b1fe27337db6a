"""Weight-space interpolation of two exports of the same model (WiSE-FT: Wortsman et al., 2022).

    afnext interpolate BASE TUNED --weight 0.6 --out DIR     # DIR = BASE + 0.6 x (TUNED - BASE)

Fine-tuning for one skill drags the weights away from what the earlier training learned; on pretrained
models the straight line between the two exports often keeps most of the new skill and most of the old
ones, at no training cost (Wortsman et al.). ``weight`` 0 gives BASE back, 1 gives TUNED. It is no
universal fix: on the nano speedrun's onset post-training (from-scratch weights, a large learning rate)
the line traded the skills no better than a gentler post-training did (configs/nano/posttrain.toml).

The result is an ordinary HF-format export: TUNED's config, generation defaults, tokenizer and template
files, the interpolated weights, and ``training.json`` recording both sources and the weight. Both
exports must share the architecture (config.json's model fields) and the tokenizer, or the weights' rows
and the token ids would not mean the same thing; every mismatch is refused with what differs.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch

from afnext.checkpoint import CheckpointError, load_model, save_model

# Files of TUNED's export that are not weights and come along as they are (tokenizer, templates, processor).
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "config.json", "generation_config.json",
                 "training.json")


class MergeError(RuntimeError):
    pass


def _same_tokenizer(a: Path, b: Path) -> bool:
    fa, fb = a / "tokenizer.json", b / "tokenizer.json"
    if not fa.is_file() or not fb.is_file():
        return fa.is_file() == fb.is_file()
    return json.loads(fa.read_text(encoding="utf-8"))["model"] == json.loads(fb.read_text(encoding="utf-8"))["model"]


def interpolate(base_dir: str | Path, tuned_dir: str | Path, out: str | Path, weight: float) -> Path:
    """Write ``out`` = ``base`` + ``weight`` x (``tuned`` - ``base``), tensor by tensor, as an export that
    ``afnext ask`` and transformers load. Written beside ``out`` and renamed in (never half-visible)."""
    base_dir, tuned_dir, out = Path(base_dir), Path(tuned_dir), Path(out)
    if not (isinstance(weight, (int, float)) and math.isfinite(weight)):
        raise MergeError(f"--weight must be a finite number, got {weight!r}")
    for d in (base_dir, tuned_dir):
        if not (d / "config.json").is_file():
            raise MergeError(f"{d} is not an exported checkpoint (no config.json)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MergeError(f"{out} already exists and is not empty; give a new directory")
    try:
        base, tuned = load_model(base_dir), load_model(tuned_dir)
    except CheckpointError as exc:
        raise MergeError(str(exc)) from None
    if base.config.to_hf_dict() != tuned.config.to_hf_dict():
        a, b = base.config.to_hf_dict(), tuned.config.to_hf_dict()
        diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        raise MergeError(f"{base_dir} and {tuned_dir} are different models (config.json differs in: {', '.join(diff)})")
    if not _same_tokenizer(base_dir, tuned_dir):
        raise MergeError(f"{base_dir} and {tuned_dir} have different tokenizers; their token ids do not correspond")
    state = tuned.state_dict()
    done: set[int] = set()  # tied weights (lm_head = embed_tokens) share storage: move them once
    with torch.no_grad():
        for name, t0 in base.state_dict().items():
            t1 = state[name]
            if t1.is_floating_point() and t1.data_ptr() not in done:
                done.add(t1.data_ptr())
                t1.copy_(t0 + weight * (t1 - t0))
    tmp = out.with_name(f".{out.name}-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(tuned, tmp)
    for f in tuned_dir.iterdir():
        if f.is_file() and f.name not in _WEIGHT_FILES:
            shutil.copy2(f, tmp / f.name)
    info = {"merge": {"base": str(base_dir), "tuned": str(tuned_dir), "weight": weight}}
    for name, d in (("base_training", base_dir), ("tuned_training", tuned_dir)):
        if (d / "training.json").is_file():
            info[name] = json.loads((d / "training.json").read_text(encoding="utf-8"))
    (tmp / "training.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
