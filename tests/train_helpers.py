"""Shared set-up for tests/test_train.py: a tiny corpus, stage configs, and `afnext train` runners.

The corpus is the smoke recipe: 24 short WAV clips (2-11 s, written with numpy and the stdlib `wave`
module) asking "How long is this clip?", plus 4 text-only rows, as an AF3 JSONL manifest behind a
registry.toml. The model is a nano model trained from scratch with the tokenizer of a tiny checkpoint
(encoder 64 wide x 2 layers, LLM 64 wide x 2 layers), so a 4-step run costs a few CPU seconds.

Every training process runs single-threaded (OMP_NUM_THREADS=1, system.threads=1): CPU kernels are then
deterministic and independent of how many tests run at once, so runs can be compared with ==.

Run as a script, this module is also the "preempted job" of the exact-resume test:

    python tests/train_helpers.py stop-after N CONFIG [--set k=v ...]

trains like `afnext train CONFIG` but exits (os._exit, no export, no clean-up) right after the
checkpoint of step N is complete.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np

SR = 16_000
REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300
N_AUDIO, N_TEXT = 24, 4


# ---- corpus -----------------------------------------------------------------------------------------
from conftest import tone_mix  # noqa: E402  (the shared test signal)


def write_wav(path: Path, samples: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(np.clip(np.round(samples * 32767), -32768, 32767).astype(np.int16).tobytes())
    return path


def _audio_row(i: int, sound: str, dur: float) -> dict:
    return {"id": f"s{i}", "sound": sound, "duration": dur, "family": "duration",
            "conversations": [{"from": "human", "value": "<sound>\nHow long is this clip?"},
                              {"from": "gpt", "value": f"It is {int(dur)} seconds long."}]}


def _text_row(i: int) -> dict:
    return {"id": f"t{i}", "family": "text",
            "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "hi"}]}


def make_corpus(root: Path, *, n_audio: int = N_AUDIO, n_text: int = N_TEXT, missing: int = 0,
                name: str = "train") -> Path:
    """Write root/audio/*.wav, root/<name>.jsonl and root/<name>-registry.toml; return the registry.

    missing: that many extra rows whose audio file does not exist (the loader must skip them).
    """
    (root / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_audio):
        dur = float(rng.integers(2, 12))
        wav = root / "audio" / f"{i}.wav"
        if not wav.exists():
            write_wav(wav, tone_mix(dur, seed=i))
        rows.append(_audio_row(i, f"audio/{i}.wav", dur))
    rows += [_text_row(i) for i in range(n_text)]
    for j in range(missing):
        rows.append(_audio_row(1000 + j, f"audio/missing-{j}.wav", 3.0))
    manifest = root / f"{name}.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    registry = root / f"{name}-registry.toml"
    registry.write_text(f'[datasets.train]\nmanifest = "{manifest.name}"\n')
    return registry


def write_config(path: Path, *, registry: Path, processor: Path, out_dir: Path, max_steps: int = 4,
                 save_every: int = 0, freeze: dict | None = None, extra: str = "") -> Path:
    """The smoke stage config (nano model from scratch, global batch 8, 2048-token micro-batches)."""
    freeze = freeze or {"encoder": "train", "adapter": "train", "llm": "train"}
    fz = ", ".join(f'{k} = "{v}"' for k, v in freeze.items())
    path.write_text(f"""\
[run]
stage = "test"
out_dir = "{out_dir}"
init = "scratch"
[model]
encoder_hidden = 64
encoder_layers = 2
encoder_ffn = 128
llm_hidden = 64
llm_layers = 2
llm_ffn = 128
[data]
registry = "{registry}"
processor = "{processor}"
global_batch = 8
token_budget = 2048
max_tokens = 2048
[optim]
freeze = {{ {fz} }}
lr = {{ encoder = 1e-3, adapter = 1e-3, llm = 1e-3 }}
max_steps = {max_steps}
[system]
save_every = {save_every}
threads = 1
{extra}""")
    return path


# ---- running ----------------------------------------------------------------------------------------
from conftest import Result  # noqa: E402  (one subprocess record for all tests)


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items()
         if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "WORLD_SIZE", "RANK", "LOCAL_RANK",
                      "MASTER_ADDR", "MASTER_PORT", "AFNEXT_TEST_SAVE_DELAY_S")}
    e.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONIOENCODING="utf-8", COLUMNS="60",
             OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    e.update(extra)
    return e


def run(argv: list, *, extra_env: dict | None = None, timeout: float = TIMEOUT_S) -> Result:
    argv = [str(a) for a in argv]
    t0 = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True, encoding="utf-8", env=env(**(extra_env or {})),
                       timeout=timeout, cwd=REPO, stdin=subprocess.DEVNULL)
    return Result(argv, p.returncode, p.stdout, p.stderr, time.perf_counter() - t0)


def afnext(*args, extra_env: dict | None = None) -> Result:
    return run([sys.executable, "-m", "afnext.cli", *args], extra_env=extra_env)


def train(config: Path, *sets: str, resume: bool = False, extra_env: dict | None = None) -> Result:
    args = ["train", config, "--quiet", *[a for s in sets for a in ("--set", s)]]
    return afnext(*args, *(["--resume"] if resume else []), extra_env=extra_env)


def train_stop_after(step: int, config: Path, *sets: str) -> Result:
    return run([sys.executable, __file__, "stop-after", step, config, *sets])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, config: Path, *sets: str) -> Result:
    torchrun_bin = Path(sys.executable).with_name("torchrun")
    args = ["train", config, "--quiet", *[a for s in sets for a in ("--set", s)]]
    return run([torchrun_bin, "--nproc_per_node", nproc, "--master_addr", "127.0.0.1",
                "--master_port", free_port(), "-m", "afnext.cli", *args])


def train_and_kill_mid_save(config: Path, *sets: str, kill_step: int, delay_s: float = 0.5,
                            timeout: float = TIMEOUT_S) -> tuple[Result, Path]:
    """`afnext train` with slow saves (AFNEXT_TEST_SAVE_DELAY_S); SIGKILL it as soon as the temp directory
    of the step-`kill_step` checkpoint exists. Returns the result and that temp directory."""
    run_dir = Path(_config_value(config, sets, "run", "out_dir"))
    tmp = run_dir / "checkpoints" / f".tmp-step-{kill_step:06d}"
    argv = [str(a) for a in (sys.executable, "-m", "afnext.cli", "train", config, "--quiet",
                             *[a for s in sets for a in ("--set", s)])]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=env(AFNEXT_TEST_SAVE_DELAY_S=str(delay_s)), stdin=subprocess.DEVNULL)
    try:
        while proc.poll() is None and not tmp.is_dir():
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"{tmp} never appeared")
            time.sleep(0.01)
        if proc.poll() is None:
            proc.kill()  # SIGKILL, to this process only
    finally:
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate()
    return Result(argv, proc.returncode, out, err, time.perf_counter() - t0), tmp


def _config_value(config: Path, sets, section: str, key: str):
    from afnext.train.config import TrainConfig

    return getattr(getattr(TrainConfig.load(config, list(sets)), section), key)


# ---- reading runs -----------------------------------------------------------------------------------
STEP_KEYS = ("step", "loss", "grad_norm", "lr", "samples", "tokens", "label_tokens", "micro_batches", "audio_s")


def metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock fields."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: r[k] for k in STEP_KEYS} for r in rows]


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in metrics(run_dir)]


def weights(ckpt_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(ckpt_dir / "model.safetensors"))


def grad_change(trainer, batch: dict, option: str, off) -> dict[str, float]:
    """How much one micro-step's gradient moves, per parameter, when ``optim.<option>`` is set to ``off``
    (max |difference|); the option is put back afterwards."""
    def grads():
        trainer.model.zero_grad(set_to_none=True)
        trainer._micro_step(batch, 1.0)
        return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}

    with_it = grads()
    on = getattr(trainer.cfg.optim, option)
    setattr(trainer.cfg.optim, option, off)
    try:
        without = grads()
    finally:
        setattr(trainer.cfg.optim, option, on)
    trainer.model.zero_grad(set_to_none=True)
    for head in (getattr(trainer, "_time_head", None), getattr(trainer, "_word_time_head", None)):
        if head is not None:  # the auxiliary heads sit outside the model: leave no gradient for the next step
            head.linear.zero_grad(set_to_none=True)
    return {n: (with_it[n] - without[n]).abs().max().item() for n in without}


def max_weight_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


# ---- the "preempted job" ----------------------------------------------------------------------------
def _stop_after_main(argv: list[str]) -> None:
    step, config, sets = int(argv[0]), argv[1], argv[2:]
    from afnext.train.config import TrainConfig
    from afnext.train.loop import Trainer

    trainer = Trainer(TrainConfig.load(config, sets), progress=False)
    save = trainer.save

    def save_then_stop():
        path = save()
        if trainer.step >= step:
            sys.stdout.flush()
            os._exit(0)
        return path

    trainer.save = save_then_stop
    trainer.fit()
    raise SystemExit(f"the run ended before a checkpoint at step {step} (is system.save_every set?)")


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[1] != "stop-after":
        raise SystemExit("usage: python tests/train_helpers.py stop-after N CONFIG [k=v ...]")
    _stop_after_main(sys.argv[2:])
