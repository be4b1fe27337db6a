"""Tiny random checkpoints for tests and demos.

`make_tiny_checkpoint(path, kind="afnext" | "af3", seed=0)` writes a complete Hugging Face-format
directory, the same files a released checkpoint has (config.json, model.safetensors,
generation_config.json, tokenizer.json, tokenizer_config.json, chat_template.jinja,
processor_config.json, preprocessor_config.json), so every code path that loads NVIDIA's
checkpoints can be exercised without downloading 8B parameters. The tokenizer is a small byte-level
BPE with the real special-token strings and the real chat template; their ids follow the small
vocabulary and are written into config.json, as the real converter does.

The encoder keeps the real time geometry (128 mel bins, 1500 positions per 30-s window, 750 tokens),
only narrower and shallower, so window, token and RoTE arithmetic is the real one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from afnext.checkpoint import save_model
from afnext.config import AF3_MODEL_TYPE, AFNEXT_MODEL_TYPE, AFNextConfig, EncoderConfig, LLMConfig, RoTEConfig
from afnext.model.afnext import AFNext
from afnext.tokenizer_files import EOS_TOKEN, PAD_TOKEN, build_tiny_tokenizer, write_tokenizer_files

TINY_ENCODER = dict(hidden_size=80, num_layers=2, num_heads=4, intermediate_size=160)
TINY_LLM = dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2)


def tiny_config(kind: str, vocab_size: int, token_ids: dict[str, int]) -> AFNextConfig:
    if kind not in ("afnext", "af3"):
        raise ValueError(f"kind must be 'afnext' or 'af3', got {kind!r}")
    is_afnext = kind == "afnext"
    llm = LLMConfig(
        vocab_size=vocab_size,
        rope_theta=15.3e6 if is_afnext else 1e6,  # the AF-Next converter's theta; AF3 keeps Qwen2.5's
        max_position_embeddings=131072 if is_afnext else 32768,
        eos_token_id=token_ids[EOS_TOKEN],
        pad_token_id=token_ids[PAD_TOKEN],
        **TINY_LLM,
    )
    return AFNextConfig(
        model_type=AFNEXT_MODEL_TYPE if is_afnext else AF3_MODEL_TYPE,
        encoder=EncoderConfig(**TINY_ENCODER),
        llm=llm,
        rote=RoTEConfig() if is_afnext else None,
        audio_token_id=token_ids["<sound>"],
        audio_bos_token_id=token_ids["<|sound_bos|>"] if is_afnext else None,
        audio_eos_token_id=token_ids["<|sound_eos|>"] if is_afnext else None,
    )


def make_tiny_checkpoint(path: str | Path, kind: str = "afnext", seed: int = 0, *, init_std: float = 0.2) -> Path:
    """Write a tiny random checkpoint directory and return its path.

    init_std: weights are drawn N(0, init_std); larger than a trained model's so that random logits
    are far from uniform and parity tests see real differences when something is wrong.
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tiny_tokenizer()
    ids = {t: tok.token_to_id(t) for t in ["<sound>", "<|sound_bos|>", "<|sound_eos|>", EOS_TOKEN, PAD_TOKEN]}
    config = tiny_config(kind, tok.get_vocab_size(), ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AFNext(config)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.copy_(1.0 + 0.1 * torch.randn_like(p) if name.endswith("weight") else 0.1 * torch.randn_like(p))
                else:
                    p.normal_(0.0, init_std)
    if kind == "afnext":
        model.generation_defaults = {"bos_token_id": None, "eos_token_id": ids[EOS_TOKEN],
                                     "pad_token_id": ids[PAD_TOKEN], "max_new_tokens": 2048}
    else:  # what the AF3 converter writes
        model.generation_defaults = {"bos_token_id": None, "do_sample": True, "eos_token_id": [ids[EOS_TOKEN], ids[PAD_TOKEN]],
                                     "pad_token_id": ids[PAD_TOKEN], "repetition_penalty": 1.05, "temperature": 0.7,
                                     "top_k": 20, "top_p": 0.8}
    save_model(model, out)
    write_tokenizer_files(out, tok, kind=kind)
    return out


def read_config(path: str | Path) -> dict:
    return json.loads(Path(path, "config.json").read_text())
