import os
from dataclasses import dataclass

import numpy as np
import pytest

# Tests never touch the network; hub ids must fail fast with the offline message.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SR = 16_000


def tone_mix(seconds: float, seed: int = 0) -> np.ndarray:
    """A deterministic non-stationary test signal: chirp + tone bursts + noise, float32 at 16 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    chirp = 0.3 * np.sin(2 * np.pi * (200 + 40 * t) * t)
    bursts = 0.2 * np.sin(2 * np.pi * 880 * t) * (np.sin(2 * np.pi * 0.5 * t) > 0.6)
    return (chirp + bursts + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """One tiny random checkpoint of each layout, written by afnext.testing."""
    from afnext.testing import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("ckpt")
    return {kind: make_tiny_checkpoint(root / kind, kind=kind, seed=1) for kind in ("afnext", "af3")}


def write_wav(path, seconds: float, seed: int = 0):
    """0.1-amplitude white noise as a 16-bit mono WAV (stdlib `wave`), for manifest and loader tests."""
    import wave

    x = 0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SR))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((x * 32767).astype("<i2").tobytes())
    return path


@dataclass
class Result:
    """A finished subprocess (CLI tests, training tests)."""

    args: list[str]
    rc: int
    out: str
    err: str
    seconds: float

    def __str__(self) -> str:  # shown by pytest when an assertion fails
        return (f"{' '.join(map(str, self.args))}\nrc={self.rc} ({self.seconds:.1f} s)\n"
                f"--- stdout ---\n{self.out}\n--- stderr ---\n{self.err}")

    def json(self) -> dict:
        import json

        return json.loads(self.out)
