"""Rotary time embedding (RoTE), exactly as the released AF-Next checkpoints apply it.

The paper's idea is RoPE with the integer position i replaced by the token's absolute timestamp
tau (seconds). The released code applies that idea axially on the encoder output, before the adapter:

- 256 dims rotate by a *window* axis angle: round(window_start / 30 s) / theta * inv_freq;
- the next 256 dims by a *time-in-window* axis angle: (t / theta * 2 pi) * inv_freq;
- both are then multiplied by -2 pi * tau, with tau = 30 k + 0.04 t for token t of window k;
- the remaining 768 dims pass through.

inv_freq = theta^(-2i/256), theta = 1200, and each angle is repeat-interleaved so that rotation pairs
adjacent elements ((x0, x1) -> (-x1, x0)). Angles are formed in float32 and applied in float64,
in the same operation order as the reference: at 30 minutes the angles reach ~4e4 rad, where a
different float32 rounding order would move cos/sin by ~1e-3.

Window indices restart at 0 for each audio; `window_index_per_row` recovers them from the runs of
audio placeholder tokens in the prompt, which is the only information the reference uses.

What the code tells apart, and what it does not. The time-axis angle of token t is proportional to
t * tau, so tokens of different windows whose t * tau agree carry the *same* time-axis rotation: token
500 of window 0 (20.0 s) and token 250 of window 1 (40.0 s) both have t * tau = 10,000 token-seconds.
Only the window axis tells them apart, and it turns by window_index * tau / theta * 2 pi * inv_freq,
at most 0.21 rad for a 40-s token. A model must therefore read the window from a small rotation of
256 dims. The nano model trained on this machine does so imperfectly: of one post-trained model's 19
onset answers off by more than 2 s (of 50), 3 landed within 1.5 s of the window-0 alias of a window-1
onset (20.0 s answered for 40.5 s, whose alias is 20.6 s). tests/test_rote.py pins the aliasing.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from afnext.config import RoTEConfig


class RotaryTimeEmbedding(nn.Module):
    def __init__(self, cfg: RoTEConfig, encoder_dim: int):
        super().__init__()
        self.cfg = cfg
        dim = int(encoder_dim * cfg.partial_rotary_factor)
        inv_freq = 1.0 / (cfg.theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        # Time-axis angles for every in-window position the reference tabulates (theta of them).
        positions = torch.arange(int(cfg.theta), dtype=torch.float) / cfg.theta * (2 * math.pi)
        table = torch.repeat_interleave(positions[:, None] * inv_freq, 2, dim=-1)
        self.register_buffer("position_angles", table, persistent=False)

    @property
    def token_step_s(self) -> float:
        # mel hop x conv stride 2 x avg-pool 2
        return self.cfg.frame_step_s * 4

    def timestamps(self, window_index: torch.Tensor, tokens_per_window: int) -> torch.Tensor:
        """(W,) window indices -> (W, T) absolute token times in seconds, float32."""
        step = self.token_step_s
        offsets = torch.arange(tokens_per_window, device=window_index.device, dtype=torch.float32) * step
        return window_index[:, None] * tokens_per_window * step + offsets

    def angles(self, timestamps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w, t = timestamps.shape
        window_len_s = self.token_step_s * t
        window_pos = torch.round(timestamps[:, 0].to(self.inv_freq) / window_len_s) / self.cfg.theta
        window_freqs = torch.repeat_interleave(window_pos[:, None] * self.inv_freq, 2, dim=-1)
        window_freqs = window_freqs[:, None, :].expand(w, t, -1)
        time_freqs = self.position_angles[:t][None].expand(w, t, -1)
        freqs = torch.cat((window_freqs, time_freqs), dim=-1)
        freqs = freqs * (-timestamps * 2 * math.pi).to(freqs)[..., None]
        return freqs.cos(), freqs.sin()

    def forward(self, hidden: torch.Tensor, window_index: torch.Tensor, tokens_per_window: int | None = None) -> torch.Tensor:
        """hidden (W, T, C) encoder output (T may be trimmed below a full window); window_index (W,)
        position of each window in its audio; tokens_per_window: a full window's tokens (750)."""
        full = tokens_per_window or hidden.shape[1]
        ts = self.timestamps(window_index.to(hidden.device), full)
        cos, sin = self.angles(ts)
        t = hidden.shape[1]
        cos, sin = cos[:, :t], sin[:, :t]
        work = torch.float32 if hidden.device.type == "mps" else torch.float64  # MPS has no float64
        x = hidden.to(work)
        rot_dim = cos.shape[-1]
        rot, rest = x[..., :rot_dim], x[..., rot_dim:]
        pairs = rot.unflatten(-1, (-1, 2))
        swapped = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        rot = rot * cos.to(work) + swapped * sin.to(work)
        return torch.cat((rot, rest), dim=-1).to(hidden.dtype)


def window_index_per_row(
    input_ids: torch.Tensor, audio_token_id: int, tokens_per_row: torch.Tensor
) -> torch.Tensor:
    """Assign each encoder row (window) its index within its audio.

    Audios are the maximal runs of `audio_token_id` in `input_ids`, read row-major (batch order, then
    position); windows arrive in the same order. Each run must be covered by whole windows whose
    valid-token counts (`tokens_per_row`) add up to the run's length.
    """
    flat = (input_ids == audio_token_id).to(torch.int8)
    edges = torch.diff(torch.nn.functional.pad(flat, (1, 1)), dim=1)
    starts = torch.nonzero(edges == 1)
    ends = torch.nonzero(edges == -1)
    run_lengths = (ends[:, 1] - starts[:, 1]).tolist()
    counts = tokens_per_row.tolist()
    if sum(run_lengths) != sum(counts):
        raise ValueError(
            f"audio placeholders and audio features do not match: {sum(run_lengths)} <sound> tokens in the prompt, "
            f"{sum(counts)} audio tokens from {len(counts)} windows"
        )
    index, row = [], 0
    for run in run_lengths:
        k, covered = 0, 0
        while covered < run:
            covered += counts[row]
            index.append(k)
            k, row = k + 1, row + 1
        if covered != run:
            raise ValueError(
                f"an audio placeholder run of {run} tokens does not line up with whole 30-s windows "
                f"(windows cover {covered}); each audio needs its own <sound> run"
            )
        # A last window shorter than 3 mel frames (<= 20 ms of audio) yields no token. It is the tail of
        # the audio just covered, so it takes this audio's next index. (The reference hands it to the
        # *next* audio, whose real windows then start at index 1 and land 30 s late in time; the zero-token
        # window itself contributes nothing, so only this ownership differs.)
        while row < len(counts) and counts[row] == 0:
            index.append(k)
            k, row = k + 1, row + 1
    index.extend(range(k, k + len(counts) - row))  # no runs at all: zero-token windows only
    return torch.tensor(index, dtype=torch.long, device=tokens_per_row.device)
