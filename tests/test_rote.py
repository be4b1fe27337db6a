"""RoTE's time code as the released checkpoints compute it: which tokens it separates, and by how much."""

import math

import torch

from afnext.config import RoTEConfig
from afnext.model.rote import RotaryTimeEmbedding


def _angles(rote: RotaryTimeEmbedding) -> torch.Tensor:
    cos, sin = rote.angles(rote.timestamps(torch.tensor([0, 1]), 750))
    return torch.atan2(sin, cos)  # (window, token, dims) in (-pi, pi]


def _wrapped(a: torch.Tensor) -> torch.Tensor:
    return torch.remainder(a + math.pi, 2 * math.pi) - math.pi


def test_time_axis_aliases_tokens_with_equal_index_times_timestamp():
    rote = RotaryTimeEmbedding(RoTEConfig(), encoder_dim=1280)
    ang = _angles(rote)
    half = ang.shape[-1] // 2  # window axis first, then the time-in-window axis
    assert half == 256
    # 20.0 s (window 0, token 500) and 40.0 s (window 1, token 250): t * tau = 10,000 for both
    assert torch.equal(_wrapped(ang[0, 500, half:] - ang[1, 250, half:]).abs().max(), torch.tensor(0.0))
    # a token 40 ms later is told apart on the time axis
    assert _wrapped(ang[0, 501, half:] - ang[1, 250, half:]).abs().max() > 0.5
    # the window axis is what separates them: not at all in window 0, by at most 2 pi * 40 / 1200 rad
    assert torch.equal(ang[0, 500, :half], torch.zeros(half))
    window = ang[1, 250, :half].abs()
    assert math.isclose(float(window.max()), 2 * math.pi * 40.0 / 1200, rel_tol=1e-5)
    assert float(window.min()) < 1e-3  # the lowest frequencies barely turn
