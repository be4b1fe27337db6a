"""Turn a model reference (local directory or Hugging Face hub id) into a local directory.

A local directory always wins, so offline users never touch the network. A hub id goes through
huggingface_hub's cache; when the hub cannot be reached the error says how to pass a local copy
instead of surfacing a network traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

# Files a checkpoint directory may hold; weights are matched by pattern so sharded sets come along.
CHECKPOINT_PATTERNS = [
    "*.json",
    "*.jinja",
    "*.safetensors",
    "*.txt",
    "tokenizer.model",
]


class ModelNotFoundError(FileNotFoundError):
    """The model reference is neither a local checkpoint directory nor a reachable hub id."""


def looks_like_hub_id(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not ref.startswith((".", "/", "~"))


def resolve_model_dir(ref: str | os.PathLike, *, revision: str | None = None) -> Path:
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path}: not a checkpoint directory (config.json is missing)")
        return path
    ref = str(ref)
    if path.exists():
        raise ModelNotFoundError(f"{ref}: expected a checkpoint directory, found a file")
    if not looks_like_hub_id(ref):
        raise ModelNotFoundError(f"{ref}: no such directory, and it is not a hub id of the form owner/name")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - huggingface_hub is a declared dependency
        raise ModelNotFoundError(f"{ref}: huggingface_hub is not installed; pass a local directory") from exc
    offline_hint = (
        f"{ref}: could not download from the Hugging Face hub and no cached copy was found. "
        f"Download it on a connected machine (e.g. `hf download {ref} --local-dir ./{ref.split('/')[-1]}`) "
        f"and pass that directory with --model ./{ref.split('/')[-1]}"
    )
    try:
        local = snapshot_download(ref, revision=revision, allow_patterns=CHECKPOINT_PATTERNS)
    except Exception as exc:  # network, auth, missing repo: all reported the same way
        try:
            local = snapshot_download(ref, revision=revision, allow_patterns=CHECKPOINT_PATTERNS, local_files_only=True)
        except Exception:
            raise ModelNotFoundError(f"{offline_hint} ({type(exc).__name__})") from None
    return Path(local)
