"""`python -m afnext.demo` (`make demo`): the nano AF-Next answers questions about example clips.

The model is, in order of preference: ``examples/nano-afnext`` (a shipped nano checkpoint), the
export of your last ``make speedrun`` (``runs/speedrun/rote/posttrain/final``; a run directory from before
the post-training joined the recipe has only ``runs/speedrun/rote/midtrain2/final``), or else a tiny random
checkpoint (answers are noise; the code path is the real one). The shipped checkpoint is the export of
an earlier speedrun followed by a 2,400-step onset post-training (see the README; 8.8 MB): held out, it answers the multiple-choice questions at 94 %, transcribes with 7.5 % WER and
places event onsets in 10-60-s clips within 0.35 s (median). The clips in ``examples/clips`` are
held-out items of the speedrun corpus: two events whose start times are asked (the answers are
timestamps, one in a clip's second 30-s window), spoken digits, a spoken language, a sound. Each goes through the real command,
``afnext ask CLIP -p PROMPT --model MODEL``, and the expected answer is printed beside it. With a GPU
and the real weights the same command is ``afnext ask CLIP -p PROMPT --model nvidia/audio-flamingo-next-hf``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
NANO_MODEL = EXAMPLES / "nano-afnext"
CLIPS = EXAMPLES / "clips"
SPEEDRUN_MODELS = (Path("runs/speedrun/rote/posttrain/final"), Path("runs/speedrun/rote/midtrain2/final"))


def model_dir() -> tuple[Path, str]:
    """The nano model to ask, and what it is."""
    if (NANO_MODEL / "config.json").is_file():
        return NANO_MODEL, "the shipped nano model"
    for trained in SPEEDRUN_MODELS:
        if (trained / "config.json").is_file():
            return trained, f"the nano model of your last `make speedrun` ({trained.parent.name})"
    from afnext.testing import make_tiny_checkpoint

    tiny = Path("runs/demo/tiny-afnext")
    if not (tiny / "model.safetensors").is_file():
        make_tiny_checkpoint(tiny, kind="afnext", seed=0)
    return tiny, ("a tiny RANDOM checkpoint (its answers are noise; `make speedrun` trains the nano model in "
                  "~30 min, and the demo then uses it)")


def main() -> int:
    from afnext.cli import app

    model, what = model_dir()
    examples = json.loads((CLIPS / "examples.json").read_text(encoding="utf-8"))
    print(f"model: {model}: {what}\n", file=sys.stderr)
    for ex in examples:
        clip = CLIPS / ex["clip"]
        print(f"$ afnext ask {clip.relative_to(REPO)} -p {json.dumps(ex['prompt'])} --model {model}", flush=True)
        code = app(["ask", str(clip), "-p", ex["prompt"], "--model", str(model), "--max-new-tokens", "24", "--repetition-penalty", "1.0"],
                   standalone_mode=False)
        if code:
            return int(code)
        print(f"  expected: {ex['answer']}   ({ex['about']})\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
