"""`afnext interpolate` / afnext.train.merge: weight interpolation of two exports of one model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import train_helpers as th
from afnext.testing import make_tiny_checkpoint
from afnext.train.merge import MergeError, interpolate


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    return make_tiny_checkpoint(root / "base", seed=1), make_tiny_checkpoint(root / "tuned", seed=2)


def _weights(d):
    return load_file(str(d / "model.safetensors"))


@pytest.mark.parametrize("w", [0.0, 0.3, 1.0, 1.5])
def test_every_tensor_lies_on_the_line(pair, tmp_path, w):
    base, tuned = pair
    out = interpolate(base, tuned, tmp_path / "m", w)
    a, b, m = _weights(base), _weights(tuned), _weights(out)
    assert m.keys() == a.keys() == b.keys()
    moved = 0
    for k in a:
        assert torch.allclose(m[k], a[k] + w * (b[k] - a[k]), atol=1e-6, rtol=0), k
        moved += not torch.equal(a[k], b[k])
    assert moved > 10  # the two seeds differ everywhere that has weights
    if w == 0.0:
        assert all(torch.equal(m[k], a[k]) for k in a)


def test_merged_export_loads_and_runs_like_the_interpolated_weights(pair, tmp_path):
    """A tied lm_head moves once, not twice; the merge loads in afnext with the tuned export's
    tokenizer and template, and records where it came from."""
    from afnext import AFNext, Processor

    base, tuned = pair
    out = interpolate(base, tuned, tmp_path / "m", 0.5)
    for f in tuned.iterdir():
        if f.suffix in (".jinja", ".json") and f.name not in ("config.json", "training.json", "generation_config.json"):
            assert (out / f.name).read_bytes() == f.read_bytes(), f.name
    assert json.loads((out / "training.json").read_text())["merge"] == {"base": str(base), "tuned": str(tuned), "weight": 0.5}
    assert json.loads((out / "config.json").read_text()) == json.loads((tuned / "config.json").read_text())
    m = AFNext.from_pretrained(out, dtype=torch.float32).eval()
    a = AFNext.from_pretrained(base, dtype=torch.float32).eval()
    b = AFNext.from_pretrained(tuned, dtype=torch.float32).eval()
    ref = AFNext.from_pretrained(base, dtype=torch.float32).eval()
    with torch.no_grad():
        for (name, p), q in zip(ref.named_parameters(), b.parameters()):
            p.copy_(0.5 * (p + q))
    proc = Processor.from_pretrained(out)
    inputs = proc.apply_chat_template([{"role": "user", "content": [
        {"type": "audio", "audio": th.tone_mix(3.0, seed=4)}, {"type": "text", "text": "What is it?"}]}])
    with torch.no_grad():
        lm, lr, la = m(**inputs).logits, ref(**inputs).logits, a(**inputs).logits
    assert torch.allclose(lm, lr, atol=1e-5, rtol=0)
    assert not torch.allclose(lm, la, atol=1e-2)


def _tied(path, seed):
    """A tiny checkpoint whose lm_head shares the embedding matrix (stored once, as the converter does)."""
    from safetensors.torch import save_file

    path = make_tiny_checkpoint(path, seed=seed)
    cfg = json.loads((path / "config.json").read_text())
    cfg["text_config"]["tie_word_embeddings"] = True
    (path / "config.json").write_text(json.dumps(cfg))
    w = {k: v for k, v in _weights(path).items() if not k.endswith("lm_head.weight")}
    assert len(w) == len(_weights(path)) - 1
    save_file(w, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def test_tied_embeddings_move_once(tmp_path):
    from afnext import AFNext

    base, tuned = _tied(tmp_path / "a", 1), _tied(tmp_path / "b", 2)
    out = interpolate(base, tuned, tmp_path / "m", 0.5)
    a, b, m = (AFNext.from_pretrained(d, dtype=torch.float32) for d in (base, tuned, out))
    want = 0.5 * (a.llm.embed_tokens.weight + b.llm.embed_tokens.weight)
    assert m.config.llm.tie_word_embeddings and m.lm_head.weight is m.llm.embed_tokens.weight
    assert torch.allclose(m.llm.embed_tokens.weight, want, atol=1e-6, rtol=0)


def test_refuses_what_cannot_be_merged(pair, tmp_path, tiny_dirs):
    base, tuned = pair
    with pytest.raises(MergeError, match="are different models \\(config.json differs in: "):
        interpolate(base, tiny_dirs["af3"], tmp_path / "a", 0.5)
    with pytest.raises(MergeError, match="is not an exported checkpoint \\(no config.json\\)"):
        interpolate(base, tmp_path, tmp_path / "b", 0.5)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(MergeError, match="already exists and is not empty"):
        interpolate(base, tuned, tmp_path / "full", 0.5)
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    with pytest.raises(MergeError, match="--weight must be a finite number, got nan"):
        interpolate(base, tuned, tmp_path / "c", math.nan)
    other = make_tiny_checkpoint(tmp_path / "other", seed=3)
    tok = json.loads((other / "tokenizer.json").read_text())
    tok["model"]["vocab"] = {k[::-1] if len(k) > 1 else k: v for k, v in tok["model"]["vocab"].items()}
    (other / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(MergeError, match="different tokenizers"):
        interpolate(base, other, tmp_path / "d", 0.5)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no half-written merge left behind


def test_cli_merges_and_reports_errors_in_one_line(pair, tmp_path):
    base, tuned = pair
    r = th.afnext("interpolate", base, tuned, "--weight", "0.25", "--out", tmp_path / "m")
    assert r.rc == 0 and "Traceback" not in r.err, str(r)
    assert f"wrote {tmp_path / 'm'}" in r.err
    assert json.loads((tmp_path / "m" / "training.json").read_text())["merge"]["weight"] == 0.25
    r = th.afnext("interpolate", base, tmp_path / "nowhere", "--out", tmp_path / "n")
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert r.rc == 2 and r.out == "" and len(lines) == 1 and lines[0].startswith("error:"), str(r)
    assert "nowhere is not an exported checkpoint" in lines[0]
