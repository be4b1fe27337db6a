"""`afnext info`: what a checkpoint is, read from its JSON files and safetensors headers only."""

from __future__ import annotations

import json
from collections import Counter

from safetensors import safe_open

from afnext.checkpoint import read_json, to_afnext_key, weight_files
from afnext.config import AFNextConfig
from afnext.hub import resolve_model_dir


def describe(ref: str) -> dict:
    d = resolve_model_dir(ref)
    cfg = AFNextConfig.from_dir(d)
    params: Counter[str] = Counter()
    dtypes: Counter[str] = Counter()
    for file in weight_files(d):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                sl = f.get_slice(key)
                n = 1
                for s in sl.get_shape():
                    n *= s
                group = (to_afnext_key(key) or "other").split(".")[0]
                params[group] += n
                dtypes[sl.get_dtype()] += n
    proc = read_json(d / "processor_config.json")
    max_audio_s = proc.get("max_audio_len", 1800 if cfg.is_afnext else 600)
    return {
        "directory": str(d),
        "model_type": cfg.model_type,
        "family": "AF-Next" if cfg.is_afnext else "Audio Flamingo 3",
        "parameters": {k: params[k] for k in sorted(params)} | {"total": sum(params.values())},
        "stored_dtypes": dict(dtypes),
        "encoder": f"{cfg.encoder.num_layers} layers, width {cfg.encoder.hidden_size}, {cfg.encoder.num_heads} heads",
        "llm": (f"{cfg.llm.num_layers} layers, width {cfg.llm.hidden_size}, {cfg.llm.num_heads} q / "
                f"{cfg.llm.num_kv_heads} kv heads, rope theta {cfg.llm.rope_theta:g}, vocab {cfg.llm.vocab_size}"),
        "rote": None if cfg.rote is None else {"theta": cfg.rote.theta, "partial_rotary_factor": cfg.rote.partial_rotary_factor},
        "max_audio_s": max_audio_s,
        "max_audio_tokens": int(max_audio_s // 30) * 750,
        "context_tokens": cfg.llm.max_position_embeddings,
        "special_token_ids": {"audio": cfg.audio_token_id, "audio_bos": cfg.audio_bos_token_id, "audio_eos": cfg.audio_eos_token_id},
        "generation_config": read_json(d / "generation_config.json"),
    }


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(json.dumps(describe(sys.argv[1]), indent=2))
