"""Hugging Face-format checkpoints: load and save AF-Next / AF3 model directories.

Key layout. Released checkpoints (and transformers 5.x's `save_pretrained`) store the reference's
original prefixes (`audio_tower.`, `multi_modal_projector.`, `language_model.model.`,
`language_model.lm_head.`); transformers' in-memory names (`model.audio_tower.`, ..., `lm_head.`)
also occur in the wild. Both load; saves use the original layout, which transformers reads back.

Memory. The model is built on the meta device and each tensor is read from the safetensors file and
assigned in place (cast to the requested dtype one tensor at a time), so loading never holds two
copies of the weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from afnext.config import AFNextConfig
from afnext.hub import resolve_model_dir
from afnext.model.afnext import AFNext
from afnext.model.llm import RotaryEmbedding
from afnext.model.rote import RotaryTimeEmbedding

# (checkpoint prefix, afnext prefix), most specific first.
_LOAD_PREFIXES = [
    ("model.audio_tower.", "encoder."),
    ("audio_tower.", "encoder."),
    ("model.multi_modal_projector.", "adapter."),
    ("multi_modal_projector.", "adapter."),
    ("model.language_model.", "llm."),
    ("language_model.model.", "llm."),
    ("language_model.lm_head.", "lm_head."),
    ("lm_head.", "lm_head."),
]
_SAVE_PREFIXES = [
    ("encoder.", "audio_tower."),
    ("adapter.", "multi_modal_projector."),
    ("llm.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
]
# The original NVIDIA projector names, before the HF conversion renamed them.
_PROJECTOR_RENAMES = {"adapter.layers.0.": "adapter.linear_1.", "adapter.layers.2.": "adapter.linear_2."}

DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


class CheckpointError(RuntimeError):
    """A checkpoint directory is incomplete or does not match its config."""


def parse_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        # float32 on CPU (bf16 matmuls are slow there and lose parity); bf16 on accelerators.
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16") from None


def to_afnext_key(key: str) -> str | None:
    for src, dst in _LOAD_PREFIXES:
        if key.startswith(src):
            key = dst + key[len(src):]
            for old, new in _PROJECTOR_RENAMES.items():
                if key.startswith(old):
                    key = new + key[len(old):]
            return key
    return None


def to_checkpoint_key(key: str) -> str:
    for src, dst in _SAVE_PREFIXES:
        if key.startswith(src):
            return dst + key[len(src):]
    raise KeyError(key)


def weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({model_dir / name for name in weight_map.values()})
    elif (model_dir / "model.safetensors").is_file():
        files = [model_dir / "model.safetensors"]
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{model_dir}: weight shards listed in the index are missing: {', '.join(missing)}")
    return files


def _rebuild_buffers(model: AFNext, device: torch.device) -> None:
    """Non-persistent buffers (RoPE/RoTE tables) are not in the file: compute them on the target device."""
    with torch.device(device):
        if model.rote is not None:
            model.rote = RotaryTimeEmbedding(model.config.rote, model.config.encoder.hidden_size)
        model.llm.rotary = RotaryEmbedding(model.config.llm.dim_per_head, model.config.llm.rope_theta)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid JSON ({exc})") from None


def _tensor_names(file: Path) -> list[str]:
    try:
        with safe_open(str(file), framework="pt") as f:
            return list(f.keys())
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{file}: cannot read safetensors file ({exc})") from None


def _read_tensor(file: Path, key: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """One tensor, cast and placed. Same dtype on CPU stays a zero-copy view of the memory map; a cast
    maps the file only for this tensor, so the source pages are released before the next one."""
    try:
        with safe_open(str(file), framework="pt", device=str(device)) as f:
            t = f.get_tensor(key)
            if t.is_floating_point() and t.dtype != dtype:
                t = t.to(dtype)
    except Exception as exc:
        raise CheckpointError(f"{file}: cannot read tensor {key} ({exc})") from None
    return t


def load_model(ref: str | os.PathLike, *, dtype=None, device=None, revision: str | None = None) -> AFNext:
    model_dir = resolve_model_dir(ref, revision=revision)
    config = AFNextConfig.from_dir(model_dir)
    device = torch.device(device or "cpu")
    dtype = parse_dtype(dtype, device)
    with torch.device("meta"):
        model = AFNext(config)
    expected = set(model.state_dict().keys())
    if config.llm.tie_word_embeddings:
        expected.discard("lm_head.weight")
    state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for file in weight_files(model_dir):
        for key in _tensor_names(file):
            ours = to_afnext_key(key)
            if ours is None or ours not in expected:
                unexpected.append(key)
                continue
            state[ours] = _read_tensor(file, key, dtype, device)
    missing = sorted(expected - state.keys())
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensors (e.g. {', '.join(unexpected[:3])})")
        raise CheckpointError(f"{model_dir}: weights do not match config.json: {'; '.join(parts)}")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = [k for k, t in state.items() if tuple(t.shape) != shapes[k]]
    if wrong:
        k = wrong[0]
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise CheckpointError(f"{model_dir}: weights do not match config.json: {k} has shape {tuple(state[k].shape)} "
                              f"in the file, the config implies {shapes[k]}{more}")
    model.load_state_dict(state, strict=not config.llm.tie_word_embeddings, assign=True)
    if config.llm.tie_word_embeddings:
        model.lm_head.weight = model.llm.embed_tokens.weight
    model.encoder.embed_positions.requires_grad_(False)
    _rebuild_buffers(model, device)
    model.generation_defaults = read_json(model_dir / "generation_config.json")
    model.name_or_path = str(ref)
    model.source_dir = model_dir
    return model.eval()


def save_model(model: AFNext, path: str | os.PathLike, *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
    """Write config.json, generation_config.json and safetensors weights (sharded above max_shard_bytes)."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_hf_dict()
    cfg["dtype"] = str(model.dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    gen = dict(model.generation_defaults) or default_generation_config(model.config)
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")

    tensors = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and model.config.llm.tie_word_embeddings:
            continue
        tensors[to_checkpoint_key(name)] = t.detach().to("cpu").contiguous()
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(tensors):
        nbytes = tensors[key].numel() * tensors[key].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensors[key]
        size += nbytes
    for stale in list(out.glob("model*.safetensors")) + [out / "model.safetensors.index.json"]:
        stale.unlink(missing_ok=True)
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / name), metadata={"format": "pt"})
        for key, t in shard.items():
            weight_map[key] = name
            total += t.numel() * t.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def default_generation_config(config: AFNextConfig) -> dict:
    """What the AF-Next converter writes: greedy, 2048 new tokens."""
    t = config.llm
    return {"bos_token_id": t.bos_token_id, "eos_token_id": t.eos_token_id, "pad_token_id": t.pad_token_id,
            "max_new_tokens": 2048}
