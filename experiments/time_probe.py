"""Does a trained nano AF-Next's adapter output say *when* each audio token is, and from which code?

    .venv/bin/python experiments/time_probe.py [--model DIR] [--clips 240] [--probes time,class]

Probes (linear, and a one-hidden-layer MLP) learn each audio token's start time as three digits (tens,
units and tenths of seconds, the digits an onset answer is written with) from the adapter output of
the `event_onset` training clips, and are scored on held-out clips (an 80/20 split by clip) as the
median error of the time their digits spell. Then the held-out clips' encoder output is given RoTE at
a random later time (the encoder's own Whisper position table still says the true in-window time), and
the MLP probe's reading is compared with both times: close to the RoTE time means the time code the
LLM sees is RoTE's. Then the same probes learn *what* each token carries: the class of the event it
lies in (one of the eight event classes, or none), scored on the held-out clips' tokens overall, inside
events, and on each event's first three tokens (its onset, which an onset answer must find). Needs the
speedrun corpus (runs/speedrun/data).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from afnext.audio import TOKEN_SECONDS, load_audio
from afnext.data.families.sound import EVENT_LABELS
from afnext.data.tokenize import StageCaps, encode_sample
from afnext.model.afnext import AFNext
from afnext.model.encoder import tokens_from_mel_frames
from afnext.processor import Processor

CAPS = StageCaps(max_audio_s=60.0, max_tokens=8192)
TOKEN_MS = 40  # integer hop, for exact digits
PLACES = (100, 10, 1)  # tenths of a second per digit: tens, units, tenths
MAX_TOKENS = int(CAPS.max_audio_s / TOKEN_SECONDS)  # the shift keeps every token inside 60 s
NONE = len(EVENT_LABELS)  # class index of a token outside every event


def digits(token_index: torch.Tensor) -> torch.Tensor:
    tenths = token_index * TOKEN_MS // 100
    return torch.stack([tenths // p % 10 for p in PLACES], dim=-1)


def spelled_time(logits: torch.Tensor) -> torch.Tensor:
    d = logits.view(-1, len(PLACES), 10).argmax(-1)
    return d[:, 0] * 10.0 + d[:, 1] + d[:, 2] / 10.0


class Timed:
    def __init__(self, model: AFNext):
        self.model, self.per_window = model, model.encoder.tokens_per_window

    def encoder_tokens(self, proc: Processor, wave: np.ndarray) -> torch.Tensor:
        """(tokens, C) encoder output of one clip, before RoTE."""
        conv = [{"from": "human", "value": "<sound>\nx"}, {"from": "gpt", "value": "y"}]
        sample = encode_sample(proc, conv, [wave], CAPS)
        with torch.no_grad():
            hidden = self.model.encoder(sample.input_features, sample.input_features_mask)
        counts = tokens_from_mel_frames(sample.input_features_mask.sum(-1).long())
        return torch.cat([hidden[j, : int(counts[j])] for j in range(hidden.shape[0])])

    @torch.no_grad()
    def adapted(self, tokens: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Adapter output of the tokens with RoTE as if the clip started ``offset`` tokens later."""
        n = tokens.shape[0]
        windows = math.ceil((n + offset) / self.per_window)
        buf = tokens.new_zeros(windows * self.per_window, tokens.shape[-1])
        buf[offset: offset + n] = tokens
        if self.model.rote is not None:
            buf = self.model.rote(buf.view(windows, self.per_window, -1), torch.arange(windows), self.per_window).flatten(0, 1)
        return self.model.adapter(buf[offset: offset + n])


def token_classes(row: dict, n: int) -> torch.Tensor:
    """(n,) each token's event class index (0..7, EVENT_LABELS order), or NONE outside every event."""
    out = torch.full((n,), NONE)
    for e in row["labels"]["events"]:
        lo, hi = round(e["onset_s"] / TOKEN_SECONDS), round(e["offset_s"] / TOKEN_SECONDS)
        out[lo:min(hi, n)] = EVENT_LABELS.index(e["label"])
    return out


def onset_mask(row: dict, n: int, first: int = 3) -> torch.Tensor:
    mask = torch.zeros(n, dtype=torch.bool)
    for e in row["labels"]["events"]:
        lo = round(e["onset_s"] / TOKEN_SECONDS)
        mask[lo:min(lo + first, n)] = True
    return mask


def net_for(width: int, out: int, hidden: int) -> torch.nn.Module:
    return (torch.nn.Linear(width, out) if not hidden else
            torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, out)))


def fit_class_probe(x: torch.Tensor, y: torch.Tensor, hidden: int, steps: int = 1500, batch: int = 4096):
    """A class probe trained with classes balanced (events are a small share of the tokens)."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    net = net_for(x.shape[1], NONE + 1, hidden)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    counts = torch.bincount(y, minlength=NONE + 1).float().clamp(min=1)
    weight = counts.sum() / counts / (NONE + 1)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,))
        loss = F.cross_entropy(net((x[idx] - mean) / std), y[idx], weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return lambda z: net((z - mean) / std).argmax(-1)


def fit_probe(x: torch.Tensor, t: torch.Tensor, hidden: int, steps: int = 1500, batch: int = 4096):
    mean, std = x.mean(0), x.std(0) + 1e-6
    net = net_for(x.shape[1], 10 * len(PLACES), hidden)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    target = digits(t)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,))
        loss = F.cross_entropy(net((x[idx] - mean) / std).view(-1, 10), target[idx].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return lambda z: spelled_time(net((z - mean) / std))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="examples/nano-afnext")
    ap.add_argument("--data", default="runs/speedrun/data", type=Path)
    ap.add_argument("--clips", type=int, default=240)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--probes", default="time,class", help="which probes to run: time, class or both")
    ap.add_argument("--class-features", default="adapter", choices=("adapter", "encoder"),
                    help="what the class probes read: the adapter output (what the LLM sees) or the encoder output before RoTE")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    model = AFNext.from_pretrained(args.model).float().eval()
    proc = Processor.from_pretrained(args.model)
    timed = Timed(model)
    rows = [r for r in map(json.loads, (args.data / "train.jsonl").read_text().splitlines())
            if r["family"] == "event_onset"][: args.clips]
    t0 = time.perf_counter()
    tokens = [timed.encoder_tokens(proc, load_audio(args.data / r["sound"])) for r in rows]
    print(f"encoded {len(tokens)} clips, {sum(len(t) for t in tokens)} tokens ({time.perf_counter() - t0:.0f} s)")
    split = int(len(tokens) * 0.8)
    x = [timed.adapted(t) for t in tokens]
    idx = [torch.arange(len(t)) for t in tokens]
    x_train, t_train = torch.cat(x[:split]), torch.cat(idx[:split])
    x_test, t_test = torch.cat(x[split:]), torch.cat(idx[split:])
    report = {}
    for name, hidden in (("linear", 0), ("mlp", 512)) if "time" in args.probes else ():
        probe = fit_probe(x_train, t_train, hidden)
        with torch.no_grad():
            err = (probe(x_test) - t_test * TOKEN_SECONDS).abs()
            vs_rote, vs_true = [], []
            for t in tokens[split:]:
                offset = rng.randint(1, max(1, MAX_TOKENS - len(t)))
                read = probe(timed.adapted(t, offset))
                times = torch.arange(len(t)) * TOKEN_SECONDS
                vs_rote.append((read - times - offset * TOKEN_SECONDS).abs())
                vs_true.append((read - times).abs())
        report[name] = {"median_error_s": float(err.median()), "mean_error_s": float(err.mean()),
                        "shifted_vs_rote_time_s": float(torch.cat(vs_rote).median()),
                        "shifted_vs_true_time_s": float(torch.cat(vs_true).median())}
        r = report[name]
        print(f"{name} probe: held-out median error {r['median_error_s']:.2f} s (mean {r['mean_error_s']:.2f}); "
              f"RoTE moved later: {r['shifted_vs_rote_time_s']:.2f} s from the RoTE time, "
              f"{r['shifted_vs_true_time_s']:.2f} s from the true time", flush=True)
    y = [token_classes(r, len(t)) for r, t in zip(rows, tokens)]
    y_train, y_test = torch.cat(y[:split]), torch.cat(y[split:])
    if args.class_features == "encoder":
        x_train, x_test = torch.cat(tokens[:split]), torch.cat(tokens[split:])
    at_onset = torch.cat([onset_mask(r, len(t)) for r, t in zip(rows[split:], tokens[split:])])
    inside = y_test != NONE
    for name, hidden in (("linear", 0), ("mlp", 512)) if "class" in args.probes else ():
        probe = fit_class_probe(x_train, y_train, hidden)
        with torch.no_grad():
            hit = (probe(x_test) == y_test).float()
        r = report.get(name, {}) | {"class_accuracy": float(hit.mean()), "class_accuracy_in_events": float(hit[inside].mean()),
                            "class_accuracy_at_onsets": float(hit[at_onset].mean())}
        report[name] = r
        print(f"{name} class probe ({NONE} classes + none, held-out tokens): {r['class_accuracy']:.1%} overall, "
              f"{r['class_accuracy_in_events']:.1%} inside events, {r['class_accuracy_at_onsets']:.1%} on each "
              f"event's first 3 tokens (chance 1/{NONE + 1})", flush=True)
    return report


if __name__ == "__main__":
    main()
