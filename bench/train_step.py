"""Trainer step time with each of the trainer's exact speed-ups, against none of them.

    .venv/bin/python bench/train_step.py          # the nano stage 0b config, from its trained export
    .venv/bin/python bench/train_step.py --config configs/nano/midtrain1.toml --init runs/speedrun/rote/pretrain2 --steps 10

Needs the speedrun corpus and a checkpoint to start from (``make speedrun`` writes both). The default
starts stage 0b from its own trained export (``runs/speedrun/rote/stage0``): subnormal floats appear
only once weights have trained, so a fresh model would hide what flushing them saves. Five trainers
are built from the same config and seed, so they draw the same samples: the reference
(``data.share_prefix=false``, ``data.audio_cache_gb=0``, ``system.flush_denormal=false``), each speed-up
alone, and all three. The cache variants read from one cache warmed beforehand with exactly the clips
the timed steps use: the steady state of a run past its first epoch (the speedrun's stage 0b reads each
clip ~10 times, so ~80 % of its reads hit). Flushing is process-wide, so it is set before every step
to what that trainer asks for. Steps are timed in interleaved rounds (one step of each trainer per
round) after warm-up steps, so drift in machine load falls on all alike; the median step of each is
compared with the reference's. Losses are printed beside the reference's: sharing and caching are
exact; flushing changes values below 1.2e-38 only.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from afnext.data.audio_cache import AudioCache
from afnext.train.config import TrainConfig
from afnext.train.loop import Trainer

OFF = ["data.share_prefix=false", "data.audio_cache_gb=0", "system.flush_denormal=false"]
VARIANTS = {  # (overrides, reads the warmed cache)
    "reference": (OFF, False),
    "shared prefix": (["data.audio_cache_gb=0", "system.flush_denormal=false"], False),
    "audio cache": (OFF, True),
    "flush denormal": (["data.share_prefix=false", "data.audio_cache_gb=0"], False),
    "all three": (["data.audio_cache_gb=0"], True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/nano/stage0.toml")
    ap.add_argument("--init", default="runs/speedrun/rote/stage0", help="run.init override ('' : the config's)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    base = ['run.out_dir="runs/bench/train_step"'] + ([f'run.init="{args.init}"'] if args.init else [])
    total = args.warmup + args.steps

    cache = AudioCache(8 * 2**30)
    warm = Trainer(TrainConfig.load(args.config, base + OFF), progress=False)
    warm.loader.dataset.audio_cache = cache
    for _ in range(total):  # reads every clip the timed steps will read
        warm._next_samples(warm.cfg.data.global_batch)
    del warm

    trainers = {}
    for name, (sets, cached) in VARIANTS.items():
        trainers[name] = Trainer(TrainConfig.load(args.config, base + sets), progress=False)
        if cached:
            trainers[name].loader.dataset.audio_cache = cache
    times = {name: [] for name in trainers}
    losses = {name: [] for name in trainers}
    for step in range(total):
        for name, tr in trainers.items():
            torch.set_flush_denormal(tr.cfg.system.flush_denormal)
            t0 = time.perf_counter()
            record = tr.train_step()
            if step >= args.warmup:
                times[name].append(time.perf_counter() - t0)
            losses[name].append(record["loss"])
    ref = statistics.median(times["reference"])
    print(f"{args.config}: {args.steps} timed steps each (after {args.warmup}), {torch.get_num_threads()} threads")
    print(f"{'variant':<15} {'median s/step':>13} {'speed-up':>9} {'max |loss - reference loss|':>28}")
    for name in trainers:
        med = statistics.median(times[name])
        diff = max(abs(a - b) for a, b in zip(losses[name], losses["reference"]))
        print(f"{name:<15} {med:>13.3f} {ref / med:>8.2f}x {diff:>28.2e}")


if __name__ == "__main__":
    main()
