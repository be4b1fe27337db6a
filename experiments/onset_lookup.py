"""Where does the asked event's word look in LLM layer 0, on held-out onset clips, next to the model's answer?

    .venv/bin/afnext eval synthetic --model M --data runs/speedrun/data --predictions runs/preds.jsonl
    .venv/bin/python experiments/onset_lookup.py --model M --data runs/speedrun/data --predictions runs/preds.jsonl

For each held-out `event_onset` clip: the attention of the event word's last token (the query word grounding
trains, afnext.train.grounding) averaged over the layer's heads, and from it the mass on the onset span
(afnext.train.grounding.SPAN_S), the mass on the one token the onset falls in, the attention-weighted rms
distance (s) of the attended tokens from the onset, and the argmax token's distance. Reported separately
for answers within 1 s of the onset and for the rest: when the rest look exactly where the right ones do,
the look-up is not what fails, the reading of the time is.

Measured 2026-12-07 on the onset post-training's 1,800-step export (runs/val/posttrain, onset 1.05 s):
within 1 s (n = 25) span mass 1.000, onset-token mass 1.000, rms spread 0.07 s; more than 1 s off
(n = 25) 0.999, 0.999, 0.14 s. The look-up was solved; the answers misread the time of the token it found.
The same after only 600 steps (lr 2e-3 with the time-digit head, afnext.train.time_head; onset 2.20 s):
within 1 s (n = 18) 0.991, 0.991, 0.47 s; the rest (n = 32) 0.997, 0.993, 0.17 s.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from onset_readout import CAPS, Clip  # noqa: E402

from afnext.audio import TOKEN_SECONDS, load_audio  # noqa: E402
from afnext.data.families.sound import NOUN  # noqa: E402
from afnext.data.tokenize import encode_sample  # noqa: E402
from afnext.eval.synthetic import predicted_onset  # noqa: E402
from afnext.model.afnext import AFNext  # noqa: E402
from afnext.model.llm import apply_rope  # noqa: E402
from afnext.processor import Processor  # noqa: E402
from afnext.train.grounding import grounding_span, word_span  # noqa: E402


def word_attention(model: AFNext, grab: dict, ids: torch.Tensor, query: int, layer: int) -> torch.Tensor:
    """(positions up to query,) attention of ``query`` in ``layer``, mean over heads, from the hooked inputs."""
    attn = model.llm.layers[layer].self_attn
    x, cos, sin = grab["x"], grab["cos"], grab["sin"]
    d = attn.head_dim
    q = attn.q_proj(x[0, query:query + 1]).view(1, attn.heads, d).transpose(0, 1)
    k = attn.k_proj(x[0, :query + 1]).view(-1, attn.kv_heads, d)
    k = k[:, torch.arange(attn.heads) // (attn.heads // attn.kv_heads)].transpose(0, 1)
    q = apply_rope(q[None], cos[:1, query:query + 1], sin[:1, query:query + 1])[0]
    k = apply_rope(k[None], cos[:1, :query + 1], sin[:1, :query + 1])[0]
    return F.softmax((q @ k.transpose(1, 2)) / math.sqrt(d), -1)[:, 0].mean(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default="runs/speedrun/data", type=Path)
    ap.add_argument("--predictions", required=True, type=Path, help="`afnext eval synthetic --predictions` output")
    ap.add_argument("--layer", type=int, default=0)
    args = ap.parse_args()
    model = AFNext.from_pretrained(args.model, dtype=torch.float32).eval()
    proc = Processor.from_pretrained(args.model)
    with open(args.data / "eval.jsonl", encoding="utf-8") as fh:
        rows = [r for r in map(json.loads, filter(str.strip, fh)) if r["family"] == "event_onset"]
    with open(args.predictions, encoding="utf-8") as fh:
        preds = {p["id"]: p for p in map(json.loads, filter(str.strip, fh))}
    grab: dict = {}
    hook = model.llm.layers[args.layer].self_attn.register_forward_hook(
        lambda m, a, o: grab.update(x=a[0], cos=a[1], sin=a[2]))
    audio_id = model.config.audio_token_id
    stats = {"within 1 s": [], "more than 1 s off": [], "unparsable": []}
    for row in rows:
        if row["id"] not in preds:
            continue
        onset = float(row["labels"]["onset_s"])
        sample = encode_sample(proc, row["conversations"], [load_audio(args.data / row["sound"])], CAPS)
        ids = sample.input_ids
        answer = int((sample.labels != -100).nonzero()[0])
        word = word_span(ids, proc.tokenizer.encode(" " + NOUN[row["labels"]["target"]]), answer)
        with torch.no_grad():
            model(input_ids=ids[None], audio_embeds=Clip(model, sample).audio_embeds(model), logits_to_keep=1)
            p = word_attention(model, grab, ids, word[1] - 1, args.layer)
        audio = (ids == audio_id).nonzero().flatten()
        pa = p[audio] / p[audio].sum()
        times = torch.arange(len(audio)) * TOKEN_SECONDS
        lo, hi = grounding_span(ids, audio_id, onset)
        said = predicted_onset(preds[row["id"]]["prediction"])
        key = "unparsable" if said is None else "within 1 s" if abs(said - onset) <= 1.0 else "more than 1 s off"
        stats[key].append((float(p[lo:hi].sum()), float(p[lo]), float((pa * (times - onset) ** 2).sum().sqrt()),
                           abs(float(times[int(pa.argmax())]) - onset)))
    hook.remove()
    for key, part in stats.items():
        if part:
            med = [statistics.median(v) for v in zip(*part)]
            print(f"{key} (n = {len(part)}): span mass {med[0]:.3f}, onset-token mass {med[1]:.3f}, "
                  f"rms spread {med[2]:.2f} s, argmax {med[3]:.2f} s from the onset (medians)")


if __name__ == "__main__":
    main()
