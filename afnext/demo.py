"""`python -m afnext.demo`: the pipeline end to end on this machine, no downloads.

Writes a tiny random AF-Next checkpoint (`afnext.testing.make_tiny_checkpoint`) and a 75-second
example clip (tone bursts at known times over noise), then runs `afnext ask --json` on them. The
weights are random, so the answer text is noise: what the demo shows is the real code path (decode,
windows, mel, encoder, RoTE, adapter, splice, KV-cache generation, Think parsing, timings, memory).
With the real weights, the same command is
`afnext ask CLIP -p "..." --model nvidia/audio-flamingo-next-hf` (needs a GPU with ~20 GB).
"""

from __future__ import annotations

import sys
import wave
from pathlib import Path

import numpy as np

DEMO_DIR = Path("runs/demo")
SR = 16_000


def write_example_clip(path: Path, seconds: float = 75.0) -> Path:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SR)) / SR
    x = 0.02 * rng.standard_normal(t.shape)
    for onset, freq in ((12.0, 440.0), (31.5, 660.0), (58.0, 880.0)):  # three 1-s beeps at known times
        seg = (t >= onset) & (t < onset + 1.0)
        x[seg] += 0.4 * np.sin(2 * np.pi * freq * t[seg])
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype(np.int16).tobytes())
    return path


def main() -> int:
    from afnext.cli import app
    from afnext.testing import make_tiny_checkpoint

    ckpt = DEMO_DIR / "tiny-afnext"
    if not (ckpt / "model.safetensors").is_file():
        make_tiny_checkpoint(ckpt, kind="afnext", seed=0)
    clip = write_example_clip(DEMO_DIR / "beeps-75s.wav")
    print(f"checkpoint: {ckpt}\nclip: {clip} (beeps at 12.0 s, 31.5 s, 58.0 s)\n", file=sys.stderr)
    return app(["ask", str(clip), "-p", "When do the beeps start? Answer with timestamps.",
                "--model", str(ckpt), "--max-new-tokens", "32", "--json"], standalone_mode=False) or 0


if __name__ == "__main__":
    sys.exit(main())
