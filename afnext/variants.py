"""The released AF-Next variants and the generation settings their model cards recommend.

`--variant` picks the checkpoint when `--model` is not given, and the generation defaults either way;
explicit flags (`--max-new-tokens`, ...) override both. Settings not in this table come from the
checkpoint's generation_config.json (greedy, 2048 new tokens for AF-Next).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    name: str
    hub_id: str
    max_new_tokens: int | None
    repetition_penalty: float | None
    parse_reasoning: bool  # split <think>...</think> and collect timestamp evidence
    caption_prompt: str = "Describe this audio in detail, with timestamps for the main events."


VARIANTS = {
    "instruct": Variant("instruct", "nvidia/audio-flamingo-next-hf", 1024, 1.2, parse_reasoning=False),
    "think": Variant("think", "nvidia/audio-flamingo-next-think-hf", 4096, 1.2, parse_reasoning=True),
    # The captioner card gives no sampling settings: keep the checkpoint's (greedy, 2048 tokens).
    "captioner": Variant("captioner", "nvidia/audio-flamingo-next-captioner-hf", None, None, parse_reasoning=False),
}
DEFAULT_MODEL = VARIANTS["instruct"].hub_id
TRANSCRIBE_PROMPT = "Transcribe the input speech."


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)}") from None
