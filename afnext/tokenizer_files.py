"""Build tiny AF-Next-shaped tokenizers and write them in the Hugging Face checkpoint layout.

Tests and smoke runs need a tokenizer without downloading the 150K-entry Qwen2.5 one. This module trains a
small byte-level BPE with exactly the Qwen2 text pipeline (NFC normalizer, Qwen2 split regex, byte-level
alphabet, byte-level decoder) and appends the AF-Next control tokens after the learned vocabulary, the way
Qwen puts its specials after the BPE entries. The pipeline must be Qwen2's verbatim: transformers'
`Qwen2Tokenizer` rebuilds the backend from tokenizer.json's vocab/merges with its own normalizer and
pre-tokenizer, so any other pipeline would tokenise differently there and break parity tests.

`write_tokenizer_files` writes what `MusicFlamingoProcessor.save_pretrained` (AF-Next) or
`AudioFlamingo3Processor.save_pretrained` (AF3) write in transformers 5.23 (tokenizer.json,
tokenizer_config.json, chat_template.jinja, processor_config.json with the feature extractor nested in it),
plus the legacy preprocessor_config.json, so that `transformers.AutoProcessor.from_pretrained(dir)` loads the
directory (given a config.json naming the model type) and renders the same chat template as
`afnext.processor.Processor`.

Think tags: Qwen2.5's vocabulary has no `<think>` token, so unless a checkpoint adds one the Think model
writes it as ordinary BPE text, and `skip_special_tokens=True` decoding keeps it either way. We add
`<think>`/`</think>` as *non-special* added tokens (as Qwen3 does): atomic, so easy to spot in ids, yet kept
by `skip_special_tokens=True`, which the reasoning parser relies on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

# Qwen2's pre-tokenisation regex (checkpoint data: it is in every Qwen2 tokenizer.json).
QWEN2_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Order fixes the ids: appended after the BPE vocabulary, in this order.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<sound>", "<|sound_bos|>", "<|sound_eos|>"]
THINK_TOKENS = ["<think>", "</think>"]  # normal added tokens, see the module docstring
EOS_TOKEN, PAD_TOKEN = "<|im_end|>", "<|endoftext|>"

KINDS = {
    # kind: (processor class, chat template file, max_audio_len in seconds, extra processor keys)
    "afnext": ("MusicFlamingoProcessor", "afnext_chat_template.jinja", 1800,
               {"audio_bos_token": "<|sound_bos|>", "audio_eos_token": "<|sound_eos|>"}),
    "af3": ("AudioFlamingo3Processor", "af3_chat_template.jinja", 600,
            {"default_transcription_prompt": "Transcribe the input speech."}),
}
MODEL_TYPES = {"afnext": "musicflamingo", "af3": "audioflamingo3"}


def _new_qwen2_like() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 1000) -> Tokenizer:
    """Byte-level BPE with the Qwen2 pipeline; `vocab_size` counts the learned entries (256 bytes included),
    the AF-Next control tokens come on top."""
    tok = _new_qwen2_like()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    return tok


def default_tiny_corpus() -> list[str]:
    """A few hundred short deterministic English sentences about sounds, music and times."""
    sounds = ["dog barking", "rain", "a car horn", "thunder", "birds singing", "a door closing", "speech",
              "applause", "a siren", "footsteps", "wind", "an engine", "a baby crying", "laughter"]
    instruments = ["piano", "guitar", "violin", "drums", "flute", "bass", "trumpet", "synthesizer", "cello"]
    genres = ["jazz", "rock", "classical", "pop", "electronic", "folk", "hip hop", "ambient"]
    moods = ["calm", "energetic", "sad", "happy", "tense", "dreamy"]
    keys = ["C major", "A minor", "G major", "E minor", "D major", "F minor"]
    out = []
    for i, s in enumerate(sounds):
        for j in range(6):
            t0 = round(0.5 * (i + 1) + 2.5 * j, 1)
            out.append(f"The sound of {s} starts at {t0} s and ends at {t0 + 3.2:.1f} s.")
            out.append(f"Is there {s} in the audio? Yes, around {i * 7 + j}.{j} seconds.")
    for i, ins in enumerate(instruments):
        for j, g in enumerate(genres):
            bpm = 60 + 7 * i + 3 * j
            mood, key = moods[(i + j) % len(moods)], keys[(i * j) % len(keys)]
            out.append(f"A {mood} {g} piece with {ins}, {bpm} BPM in {key}.")
    for n in range(60):
        out.append(f"Question {n}: how many times do you hear it? Answer: {n % 9 + 1} times.")
        out.append(f"[{n // 60:02d}:{n:02d}] The speaker says number {n * 13} slowly.")
    out += ["Transcribe the input speech.", "Describe the audio in detail.", "What instrument is playing?",
            "Please answer with one word.", "The music is loud and clear.", "Choose the correct option (A) or (B)."]
    return out


def build_tiny_tokenizer(vocab_size: int = 512) -> Tokenizer:
    """Deterministic tiny tokenizer (same corpus and trainer settings give the same merges)."""
    return train_bpe_tokenizer(default_tiny_corpus(), vocab_size=vocab_size)


def chat_template_text(kind: str) -> str:
    name = KINDS[_check_kind(kind)][1]
    return resources.files("afnext").joinpath("templates", name).read_text(encoding="utf-8")


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown processor kind {kind!r}; expected one of {sorted(KINDS)}")
    return kind


def _added_tokens_decoder(tok: Tokenizer) -> dict[str, dict]:
    out = {}
    for idx, added in sorted(tok.get_added_tokens_decoder().items()):
        out[str(idx)] = {"content": added.content, "lstrip": added.lstrip, "normalized": added.normalized,
                         "rstrip": added.rstrip, "single_word": added.single_word, "special": added.special}
    return out


def write_tokenizer_files(out_dir, tokenizer: Tokenizer, *, kind: str = "afnext") -> Path:
    """Write the processor files of a checkpoint: tokenizer.json, tokenizer_config.json, chat_template.jinja,
    processor_config.json (the four transformers 5.23 `save_pretrained` writes) and preprocessor_config.json.
    No config.json: that is the model's file (see `write_minimal_config` for tests)."""
    cls, _, max_audio_len, extra = KINDS[_check_kind(kind)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    # Keys as transformers 5.23 writes them, minus its load-time artefacts (is_local, local_files_only), plus
    # added_tokens_decoder, which transformers 4.x readers and `TextTokenizer` use to check the added ids.
    tokenizer_config = {
        "add_prefix_space": False,
        "added_tokens_decoder": _added_tokens_decoder(tokenizer),
        "backend": "tokenizers",
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS_TOKEN,
        "model_max_length": 131072,
        "pad_token": PAD_TOKEN,
        "processor_class": cls,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    # transformers 5.x nests the feature extractor in processor_config.json (and reads that first); the
    # same dict also goes to the legacy preprocessor_config.json for 4.x-era readers.
    feature_extractor = {
        "chunk_length": 30, "dither": 0.0, "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": 128, "hop_length": 160, "n_fft": 400, "n_samples": 480000, "nb_max_frames": 3000,
        "padding_side": "right", "padding_value": 0.0, "return_attention_mask": True, "sampling_rate": 16000,
    }
    processor_config = {"audio_token": "<sound>", **extra, "feature_extractor": feature_extractor,
                        "max_audio_len": max_audio_len, "processor_class": cls}
    _write_json(out / "tokenizer_config.json", tokenizer_config)
    _write_json(out / "preprocessor_config.json", {**feature_extractor, "processor_class": cls})
    _write_json(out / "processor_config.json", processor_config)
    (out / "chat_template.jinja").write_text(chat_template_text(kind), encoding="utf-8")
    return out


def write_minimal_config(out_dir, tokenizer: Tokenizer, *, kind: str = "afnext") -> Path:
    """A config.json carrying only model_type and token ids: enough for AutoProcessor and for
    `Processor.from_pretrained`, not for building a model."""
    ids = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
    cfg = {"model_type": MODEL_TYPES[_check_kind(kind)], "audio_token_id": ids["<sound>"]}
    if kind == "afnext":
        cfg.update(audio_bos_token_id=ids["<|sound_bos|>"], audio_eos_token_id=ids["<|sound_eos|>"])
    path = Path(out_dir) / "config.json"
    _write_json(path, cfg)
    return path


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
