"""Training-sample preparation (template, tokens, log-mel features) with the tokenizer memo and the
silent-frame shortcut of the log-mel, against the same work without them.

    .venv/bin/python bench/data_prep.py            # the speedrun corpus's stage 0b families, 2 epochs of 400 clips

Needs the speedrun corpus (``make speedrun`` writes it). Waves are decoded once beforehand, so only what
the two speed-ups touch is timed: ``encode_sample`` on each clip, for two epochs (a run re-encodes its
clips every epoch; the memo pays from the second). The reference is the same code with the memo off
(``MEMO_ENTRIES = 0``) and a log-mel that takes the log of every frame of the 30-s window, as before
the shortcut. The passes alternate (reference, current, reference, current), so drift in machine load
falls on both; every sample's ids, labels and features are checked equal between the two.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import afnext.audio as A
import afnext.tokenizer as T
from afnext.data.tokenize import StageCaps, encode_sample
from afnext.processor import Processor

FAMILIES = ("asr_digits", "asr_commands", "speaker_language", "sound_class", "music_timbre", "event_onset_short")


def reference_log_mel(waves, *, device=None, total_frames=None):
    """The log-mel as computed before the silent-frame shortcut: pad the mel power, log every frame."""
    waves = torch.as_tensor(waves).to(dtype=torch.float32)
    window = torch.hann_window(A.N_FFT, periodic=True)
    spec = torch.stft(waves, A.N_FFT, A.HOP_LENGTH, window=window, center=True, pad_mode="reflect", return_complex=True)
    power = torch.view_as_real(spec[..., :-1]).pow(2).sum(-1)
    mel = torch.from_numpy(A._mel_filters()) @ power
    if total_frames is not None and total_frames > mel.shape[-1]:
        mel = F.pad(mel, (0, total_frames - mel.shape[-1]))
    log_spec = mel.clamp(min=A._LOG_FLOOR).log10()
    log_spec = torch.maximum(log_spec, log_spec.amax(dim=(-2, -1), keepdim=True) - A._DYNAMIC_RANGE)
    return (log_spec + 4.0) / 4.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="runs/speedrun/data")
    ap.add_argument("--clips", type=int, default=400, help="clips, spread over the stage 0b families")
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    data = Path(args.data)
    rows = []
    per_family = -(-args.clips // len(FAMILIES))
    for fam in FAMILIES:
        with open(data / "families" / f"{fam}.jsonl", encoding="utf-8") as fh:
            rows += [json.loads(line) for _, line in zip(range(per_family), fh)]
    waves = [A.load_audio(data / r["sound"]) for r in rows]
    caps = StageCaps(max_audio_s=60.0, max_tokens=4096)
    memo_entries, current_log_mel = T.MEMO_ENTRIES, A.log_mel_spectrogram

    def one_pass(reference: bool):
        T.MEMO_ENTRIES = 0 if reference else memo_entries
        A.log_mel_spectrogram = reference_log_mel if reference else current_log_mel
        proc = Processor.from_pretrained(data / "tokenizer")  # a fresh tokenizer: an empty memo
        times, out = [], []
        for _ in range(args.epochs):
            t0 = time.perf_counter()
            out = [encode_sample(proc, r["conversations"], [w], caps) for r, w in zip(rows, waves)]
            times.append(time.perf_counter() - t0)
        return times, out

    try:
        runs = {"reference": [], "current": []}
        for name in ["reference", "current"] * 2:
            times, samples = one_pass(name == "reference")
            runs[name].append((times, samples))
    finally:
        T.MEMO_ENTRIES, A.log_mel_spectrogram = memo_entries, current_log_mel
    for (_, ref), (_, cur) in zip(runs["reference"], runs["current"]):
        for a, b in zip(ref, cur):
            assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
            assert torch.equal(a.input_features, b.input_features), "features differ"
    n = len(rows)
    print(f"{n} clips ({', '.join(FAMILIES)}), {args.epochs} epochs, {torch.get_num_threads()} threads; outputs identical")
    print(f"{'epoch':<6} {'reference ms/clip':>18} {'current ms/clip':>16} {'speed-up':>9}")
    for e in range(args.epochs):
        ref = statistics.median(t[e] for t, _ in runs["reference"]) / n * 1e3
        cur = statistics.median(t[e] for t, _ in runs["current"]) / n * 1e3
        print(f"{e + 1:<6} {ref:>18.2f} {cur:>16.2f} {ref / cur:>8.2f}x")


if __name__ == "__main__":
    main()
