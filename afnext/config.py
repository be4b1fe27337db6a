"""Model configuration as plain dataclasses, read from (and written back to) Hugging Face `config.json`.

One `AFNextConfig` describes both released layouts:
- `musicflamingo` (AF-Next Instruct / Think / Captioner): rotary time embeddings (RoTE) on the encoder
  output and `<|sound_bos|>` / `<|sound_eos|>` around each audio's placeholder run;
- `audioflamingo3` (AF3): the same encoder, adapter and LLM, without RoTE or sound bos/eos.

The checkpoint's own `config.json` is kept verbatim (`hf_dict`) so a save writes back exactly what was
loaded, unknown keys included; the dataclasses hold only what the model code reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AFNEXT_MODEL_TYPE = "musicflamingo"
AF3_MODEL_TYPE = "audioflamingo3"
SUPPORTED_MODEL_TYPES = (AFNEXT_MODEL_TYPE, AF3_MODEL_TYPE)


class ConfigError(ValueError):
    """A checkpoint configuration is missing a field or describes a model afnext cannot build."""


@dataclass
class EncoderConfig:
    """AF-Whisper: Whisper-large-v3 encoder shape, then avg-pool x2 and LayerNorm."""

    num_mel_bins: int = 128
    hidden_size: int = 1280
    num_layers: int = 32
    num_heads: int = 20
    intermediate_size: int = 5120
    max_source_positions: int = 1500  # conv2 outputs per 30-s window
    activation: str = "gelu"
    layer_norm_eps: float = 1e-5  # torch's LayerNorm default, which the reference uses


@dataclass
class RoTEConfig:
    """Rotary time embedding applied to encoder outputs (AF-Next only)."""

    theta: float = 1200.0
    partial_rotary_factor: float = 0.2  # of the encoder width: 0.2 x 1280 = 256 rotated dims per axis
    frame_step_s: float = 0.01  # seconds per mel frame (hop 160 at 16 kHz)


@dataclass
class LLMConfig:
    """Qwen2 decoder."""

    vocab_size: int = 151672
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_layers: int = 28
    num_heads: int = 28
    num_kv_heads: int = 4
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 131072
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads


@dataclass
class AFNextConfig:
    model_type: str = AFNEXT_MODEL_TYPE
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    rote: RoTEConfig | None = field(default_factory=RoTEConfig)
    audio_token_id: int = 151669
    audio_bos_token_id: int | None = 151670
    audio_eos_token_id: int | None = 151671
    projector_hidden_act: str = "gelu"
    projector_bias: bool = True
    hf_dict: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_afnext(self) -> bool:
        return self.model_type == AFNEXT_MODEL_TYPE

    # ---- reading -------------------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> "AFNextConfig":
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"config.json has model_type {model_type!r}; afnext loads {' and '.join(SUPPORTED_MODEL_TYPES)}"
            )
        audio = d.get("audio_config") or {}
        text = d.get("text_config") or {}
        if not text:
            raise ConfigError("config.json has no text_config")

        def pick(src: dict, *names: str, default: Any = None) -> Any:
            for n in names:
                if n in src and src[n] is not None:
                    return src[n]
            return default

        enc = EncoderConfig(
            num_mel_bins=pick(audio, "num_mel_bins", default=128),
            hidden_size=pick(audio, "hidden_size", "d_model", default=1280),
            num_layers=pick(audio, "num_hidden_layers", "encoder_layers", default=32),
            num_heads=pick(audio, "num_attention_heads", "encoder_attention_heads", default=20),
            intermediate_size=pick(audio, "intermediate_size", "encoder_ffn_dim", default=5120),
            max_source_positions=pick(audio, "max_source_positions", default=1500),
            activation=pick(audio, "activation_function", default="gelu"),
        )
        if pick(audio, "scale_embedding", default=False):
            raise ConfigError("audio_config.scale_embedding=true is not used by any AF checkpoint and is unsupported")
        rope = text.get("rope_parameters") or {}
        if rope.get("rope_type", "default") not in ("default", None):
            raise ConfigError(f"text_config rope_type {rope.get('rope_type')!r} is not supported (only 'default')")
        llm = LLMConfig(
            vocab_size=text["vocab_size"],
            hidden_size=text["hidden_size"],
            intermediate_size=text["intermediate_size"],
            num_layers=text["num_hidden_layers"],
            num_heads=text["num_attention_heads"],
            num_kv_heads=pick(text, "num_key_value_heads", default=text["num_attention_heads"]),
            head_dim=text.get("head_dim"),
            rms_norm_eps=pick(text, "rms_norm_eps", default=1e-6),
            rope_theta=float(pick(rope, "rope_theta", default=pick(text, "rope_theta", default=10000.0))),
            max_position_embeddings=pick(text, "max_position_embeddings", default=32768),
            hidden_act=pick(text, "hidden_act", default="silu"),
            tie_word_embeddings=bool(pick(text, "tie_word_embeddings", default=d.get("tie_word_embeddings", False))),
            bos_token_id=text.get("bos_token_id"),
            eos_token_id=text.get("eos_token_id"),
            pad_token_id=text.get("pad_token_id"),
        )
        if text.get("use_sliding_window"):
            raise ConfigError("text_config.use_sliding_window=true is not supported")
        rote = None
        if model_type == AFNEXT_MODEL_TYPE:
            rp = d.get("rope_parameters") or {}
            rote = RoTEConfig(
                theta=float(pick(rp, "rope_theta", default=1200.0)),
                partial_rotary_factor=float(pick(rp, "partial_rotary_factor", default=0.2)),
                frame_step_s=float(pick(d, "audio_frame_step", default=0.01)),
            )
        return cls(
            model_type=model_type,
            encoder=enc,
            llm=llm,
            rote=rote,
            audio_token_id=pick(d, "audio_token_id", default=151669),
            audio_bos_token_id=pick(d, "audio_bos_token_id", default=151670) if rote else None,
            audio_eos_token_id=pick(d, "audio_eos_token_id", default=151671) if rote else None,
            projector_hidden_act=pick(d, "projector_hidden_act", default="gelu"),
            projector_bias=bool(pick(d, "projector_bias", default=True)),
            hf_dict=dict(d),
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> "AFNextConfig":
        p = Path(path) / "config.json"
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{p}: file not found") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{p}: invalid JSON ({exc})") from None
        return cls.from_hf_dict(d)

    # ---- writing -------------------------------------------------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        """The config.json content: the loaded dict when there is one, else one built from the fields."""
        if self.hf_dict:
            return dict(self.hf_dict)
        e, t = self.encoder, self.llm
        text = {
            "model_type": "qwen2",
            "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_layers,
            "num_attention_heads": t.num_heads,
            "num_key_value_heads": t.num_kv_heads,
            "rms_norm_eps": t.rms_norm_eps,
            "rope_parameters": {"rope_theta": t.rope_theta, "rope_type": "default"},
            "max_position_embeddings": t.max_position_embeddings,
            "hidden_act": t.hidden_act,
            "tie_word_embeddings": t.tie_word_embeddings,
            "use_sliding_window": False,
            "sliding_window": None,
            "attention_dropout": 0.0,
            "bos_token_id": t.bos_token_id,
            "eos_token_id": t.eos_token_id,
            "pad_token_id": t.pad_token_id,
            "layer_types": ["full_attention"] * t.num_layers,
            "max_window_layers": t.num_layers,
            "use_cache": True,
        }
        if t.head_dim is not None:
            text["head_dim"] = t.head_dim
        audio = {
            "model_type": "audioflamingo3_encoder",
            "num_mel_bins": e.num_mel_bins,
            "hidden_size": e.hidden_size,
            "num_hidden_layers": e.num_layers,
            "num_attention_heads": e.num_heads,
            "intermediate_size": e.intermediate_size,
            "max_source_positions": e.max_source_positions,
            "activation_function": e.activation,
            "scale_embedding": False,
            "dropout": 0.0,
            "attention_dropout": 0.0,
            "activation_dropout": 0.0,
            "layerdrop": 0.0,
        }
        arch = "MusicFlamingoForConditionalGeneration" if self.is_afnext else "AudioFlamingo3ForConditionalGeneration"
        d: dict[str, Any] = {
            "architectures": [arch],
            "model_type": self.model_type,
            "audio_config": audio,
            "text_config": text,
            "audio_token_id": self.audio_token_id,
            "projector_hidden_act": self.projector_hidden_act,
            "projector_bias": self.projector_bias,
            "dtype": "float32",
        }
        if self.rote is not None:
            d.update(
                audio_bos_token_id=self.audio_bos_token_id,
                audio_eos_token_id=self.audio_eos_token_id,
                audio_frame_step=self.rote.frame_step_s,
                rope_parameters={
                    "rope_theta": self.rote.theta,
                    "partial_rotary_factor": self.rote.partial_rotary_factor,
                    "rope_type": "default",
                },
            )
        return d

    def save(self, path: str | Path) -> None:
        Path(path, "config.json").write_text(json.dumps(self.to_hf_dict(), indent=2) + "\n", encoding="utf-8")
