"""AF-Whisper, the audio encoder: Whisper-large-v3's encoder followed by avg-pool x2 and a LayerNorm.

Input is one 30-second window of log-mel per row, (W, 128, 3000); output is (W, 750, 1280), one
vector per 40 ms. Windows are independent here; which audio a window belongs to, and where it sits
in time, is RoTE's business (`rote.py`), not the encoder's.

Padded frames of a partial last window are masked as keys (not as queries) exactly as the reference
does, so the valid outputs of a partial window match it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from afnext.config import EncoderConfig
from afnext.model.attention import AttentionMask, attend


TRIM_MULTIPLE = 16  # mel frames; trimmed windows keep a multiple of this length (regular shapes)


def conv_output_frames(mel_frames: torch.Tensor | int):
    """Frames after conv2 (stride 2)."""
    return (mel_frames - 1) // 2 + 1


def tokens_from_mel_frames(mel_frames: torch.Tensor | int):
    """Audio tokens after conv2 and the x2 average pool: 3000 mel frames -> 750 tokens."""
    return (conv_output_frames(mel_frames) - 2) // 2 + 1


class EncoderAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        if self.head_dim * heads != dim:
            raise ValueError(f"encoder width {dim} is not divisible by {heads} heads")
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim, bias=False)  # Whisper's key projection has no bias
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: AttentionMask) -> torch.Tensor:
        b, t, _ = x.shape

        def heads(y):
            return y.view(b, t, self.heads, self.head_dim).transpose(1, 2)

        # Whisper scales q before the dot product (not the logits after); the order changes low bits,
        # and matching it keeps parity with the released weights' reference.
        q = heads(self.q_proj(x) * self.head_dim**-0.5)
        out = attend(q, heads(self.k_proj(x)), heads(self.v_proj(x)), mask, scale=1.0)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, -1))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        d = cfg.hidden_size
        self.self_attn = EncoderAttention(d, cfg.num_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(d, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, d)
        self.final_layer_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: AttentionMask) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), mask)
        x = x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))
        if x.dtype == torch.float16:
            # fp16 activations in late Whisper layers can exceed the range; clamp as the reference does.
            big = torch.finfo(torch.float16).max - 1000
            x = x.clamp(-big, big)
        return x


class AudioEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        if cfg.activation != "gelu":
            raise ValueError(f"encoder activation {cfg.activation!r} is not supported (AF-Whisper uses gelu)")
        self.cfg = cfg
        d = cfg.hidden_size
        self.conv1 = nn.Conv1d(cfg.num_mel_bins, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(cfg.max_source_positions, d)
        self.embed_positions.requires_grad_(False)  # Whisper's sinusoidal table stays fixed, as in the reference
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_layers))
        self.layer_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.gradient_checkpointing = False

    @property
    def window_frames(self) -> int:
        """Mel frames per window the positional table was trained for (3000 for 1500 positions)."""
        return self.cfg.max_source_positions * 2

    @property
    def tokens_per_window(self) -> int:
        return int(tokens_from_mel_frames(self.window_frames))

    def forward(self, features: torch.Tensor, features_mask: torch.Tensor | None = None) -> torch.Tensor:
        """features (W, n_mels, frames) -> (W, tokens, d); features_mask (W, frames) marks real frames.

        With a mask, the output may be shorter than `tokens_per_window` (padding trimmed); every valid
        token is present and equal to the untrimmed computation.
        """
        if features.shape[-1] != self.window_frames:
            raise ValueError(
                f"encoder expects {self.window_frames} mel frames per window, got {features.shape[-1]}; "
                "pad each window to 30 s (the processor does)"
            )
        if features_mask is not None:
            # Trim the shared zero-padding tail: padded frames are masked keys, so the valid outputs
            # do not depend on them beyond the convolutions' reach (conv1 and conv2 read one frame
            # past their centre; 4 frames of margin cover both). A 5-s clip then costs 1/6 of a window.
            valid = int(features_mask.sum(-1).max())
            keep = min(features.shape[-1], -(-(valid + 4) // TRIM_MULTIPLE) * TRIM_MULTIPLE)
            features = features[..., :keep]
        x = F.gelu(self.conv1(features))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.embed_positions.weight[: x.shape[1]].to(x.dtype)
        key_padding = None
        if features_mask is not None:
            lengths = conv_output_frames(features_mask.sum(-1).long())
            if bool((lengths < x.shape[1]).any()):
                key_padding = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
        mask = AttentionMask(causal=False, key_padding=key_padding)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, mask, use_reentrant=False)
            else:
                x = layer(x, mask)
        x = F.avg_pool1d(x.transpose(1, 2), kernel_size=2, stride=2).transpose(1, 2)
        return self.layer_norm(x)
