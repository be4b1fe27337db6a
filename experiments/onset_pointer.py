"""Can one dot product find an event's onset among a clip's audio tokens, as LLM layer 0 must?

    .venv/bin/python experiments/onset_pointer.py --model runs/speedrun/rote/midtrain2/final
    .venv/bin/python experiments/onset_pointer.py --model runs/speedrun/rote/stage0_encoder/final

Word grounding (afnext.train.grounding) asks an attention head of LLM layer 0 to put the event word's
attention on the first tokens of that event, among up to 1,500 audio tokens. A layer-0 key is a linear
function of one token's adapter output (after the layer's RMSNorm), and the word's query is fixed per
event class, so the best that head can do is bounded by a per-class linear pointer over the same
features. This fits such a pointer (a 64-d key projection and one query per class, softmax over the
clip's tokens, loss -log mass on the onset span afnext.train.grounding.SPAN_S) on the `event_onset`
training clips with the model frozen, and reports on held-out clips: -log mass, and the median error
of the pointer's argmax token time and of its softmax-weighted mean time (what an attention average of
the tokens' times would give).

Measured 2026-12-07 (400 training clips, 100 held out, 40 epochs): the midtrain2 export of a
2,000-step speedrun, -log mass 1.81, argmax error 0.26 s, weighted-mean error 0.65 s; the stage 0a
export (before the LLM stages trained the encoder further), 1.66, 0.12 s, 0.44 s. The trainer's
word -> onset look-up on the same midtrain2 features plateaus at the same -log mass (~1.3-1.9 on
training batches, experiments/posttrain_onset.toml), so with the encoder frozen the look-up is already
as sharp as the features allow: it spreads over the event's first half-second or so.
"""

from __future__ import annotations

import argparse
import json
import random
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
from afnext.model.afnext import AFNext  # noqa: E402
from afnext.processor import Processor  # noqa: E402
from afnext.train.grounding import grounding_span  # noqa: E402

CLASSES = sorted(NOUN)


def features(model: AFNext, proc: Processor, row: dict, root: Path):
    """(tokens, C) layer-0 inputs of the clip's audio tokens (adapter output through the layer's norm)
    and (class, lo, hi) onset spans of its events, in audio-token indices."""
    conv = [{"from": "human", "value": "<sound>\nWhen?"}, {"from": "gpt", "value": "1s"}]
    sample = encode_sample(proc, conv, [load_audio(root / row["sound"])], CAPS)
    with torch.no_grad():
        x = model.llm.layers[0].input_layernorm(Clip(model, sample).audio_embeds(model))
    audio_id = model.config.audio_token_id
    first = int((sample.input_ids == audio_id).nonzero()[0])
    spans = []
    for e in row["labels"]["events"]:
        span = grounding_span(sample.input_ids, audio_id, e["onset_s"])
        if span is not None:
            spans.append((CLASSES.index(e["label"]), span[0] - first, span[1] - first))
    return x, spans


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default="runs/speedrun/data")
    ap.add_argument("--train-clips", type=int, default=400)
    ap.add_argument("--eval-clips", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=40)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = AFNext.from_pretrained(args.model, dtype=torch.float32).eval()
    proc = Processor.from_pretrained(args.model)
    root = Path(args.data)

    def rows(name: str) -> list[dict]:
        with open(root / name, encoding="utf-8") as fh:
            return [r for r in map(json.loads, filter(str.strip, fh)) if r["family"] == "event_onset"]

    train = [features(model, proc, r, root) for r in rows("train.jsonl")[: args.train_clips]]
    held = [features(model, proc, r, root) for r in rows("eval.jsonl")[: args.eval_clips]]
    key = torch.nn.Linear(train[0][0].shape[-1], 64)
    query = torch.nn.Parameter(torch.randn(len(CLASSES), 64) * 0.01)
    opt = torch.optim.Adam([query, *key.parameters()], lr=3e-3)

    def loss_of(clips) -> torch.Tensor:
        terms = [-torch.logsumexp(F.log_softmax(key(x) @ query[c], 0)[lo:hi], 0) for x, spans in clips for c, lo, hi in spans]
        return torch.stack(terms).mean()

    @torch.no_grad()
    def errors(clips) -> tuple[float, float]:
        top, mean = [], []
        for x, spans in clips:
            times = torch.arange(x.shape[0]) * TOKEN_SECONDS
            for c, lo, hi in spans:
                p = F.softmax(key(x) @ query[c], 0)
                top.append(abs(float(times[p.argmax()]) - lo * TOKEN_SECONDS))
                mean.append(abs(float((p * times).sum()) - lo * TOKEN_SECONDS))
        return statistics.median(top), statistics.median(mean)

    for epoch in range(1, args.epochs + 1):
        random.Random(epoch).shuffle(train)
        for b in range(0, len(train), 16):
            loss = loss_of(train[b: b + 16])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch % 10 == 0:
            with torch.no_grad():
                top, mean = errors(held)
                print(f"epoch {epoch}: -log mass train {float(loss_of(train)):.3f} held-out {float(loss_of(held)):.3f}; "
                      f"held-out median error: argmax {top:.2f} s, weighted mean {mean:.2f} s", flush=True)


if __name__ == "__main__":
    main()
