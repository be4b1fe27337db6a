"""High-level inference: load a checkpoint once, then answer prompts about audio (one-shot or chat).

This is the layer the CLI and the server share: it decodes audio once (to know each clip's duration
for evidence checks), renders the checkpoint's chat template, runs the engine, and post-processes
Think output into reasoning, answer and timestamp evidence.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from afnext import audio as A
from afnext.engine import Engine, GenerationConfig
from afnext.model.afnext import AFNext
from afnext.processor import Processor
from afnext.think import parse_think_output
from afnext.variants import Variant, get_variant


@dataclass
class Clip:
    name: str
    wave: np.ndarray  # float32 mono 16 kHz

    @property
    def duration_s(self) -> float:
        return len(self.wave) / A.SAMPLE_RATE


@dataclass
class Answer:
    text: str
    answer: str
    reasoning: str | None
    evidence: list[dict]
    finish_reason: str
    tokens: dict[str, int]
    timings: dict[str, float]
    audio: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "answer": self.answer,
            "reasoning": self.reasoning,
            "evidence": self.evidence,
            "text": self.text,
            "finish_reason": self.finish_reason,
            "tokens": self.tokens,
            "timings": self.timings,
            "audio": self.audio,
            "peak_memory_mb": peak_memory_mb(),
        }


def peak_memory_mb() -> dict[str, float]:
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    scale = 1 / 1024 / 1024 if sys.platform == "darwin" else 1 / 1024
    out = {"process_rss": round(rss_kb * scale, 1)}
    if torch.cuda.is_available():
        out["cuda_allocated"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def load_clips(sources: Sequence, *, max_windows: int, truncate: bool = False) -> list[Clip]:
    clips = []
    for src in sources:
        name = str(src)
        wave = A.load_audio(src, name=name)
        windows = A.split_windows(wave, max_windows=max_windows, truncate=truncate, source=name)
        kept = sum(len(w) for w in windows)
        clips.append(Clip(name, wave[:kept]))
    return clips


class Assistant:
    def __init__(self, model: AFNext, processor: Processor, variant: str | Variant = "instruct"):
        self.model, self.processor = model, processor
        self.variant = get_variant(variant) if isinstance(variant, str) else variant
        self.engine = Engine(model, processor.tokenizer)

    @classmethod
    def load(cls, model_ref: str, *, variant: str = "instruct", device: str | None = None, dtype: str | None = None):
        model = AFNext.from_pretrained(model_ref, dtype=dtype, device=device)
        return cls(model, Processor.from_pretrained(getattr(model, "source_dir", model_ref)), variant)

    def generation_config(self, **overrides) -> GenerationConfig:
        v = self.variant
        defaults = {"max_new_tokens": v.max_new_tokens, "repetition_penalty": v.repetition_penalty}
        return GenerationConfig.from_model(self.model, **{**defaults, **{k: x for k, x in overrides.items() if x is not None}})

    def respond(
        self,
        messages: list[dict],
        clips: list[Clip],
        *,
        on_delta: Callable[[str], None] | None = None,
        on_audio_progress: Callable[[int, int], None] | None = None,
        **gen,
    ) -> Answer:
        """Answer the last user turn of `messages` (content lists may hold {"type": "audio"} blocks,
        filled in order from `clips`)."""
        t0 = time.perf_counter()
        filled, it = [], iter(clips)
        for m in messages:
            content = m["content"]
            if isinstance(content, list):
                content = [
                    {"type": "audio", "audio": (next(it).wave, A.SAMPLE_RATE)} if b.get("type") == "audio" else b
                    for b in content
                ]
            filled.append({**m, "content": content})
        inputs = self.processor.apply_chat_template(filled, add_generation_prompt=True)
        t_prep = time.perf_counter() - t0
        cfg = self.generation_config(**gen)
        result = self.engine.generate(
            inputs, cfg, on_delta=(lambda _row, d: on_delta(d)) if on_delta else None,
            on_audio_progress=on_audio_progress,
        )[0]
        text = result.text or ""
        duration = max((c.duration_s for c in clips), default=None)
        parsed = parse_think_output(text, duration)
        if not self.variant.parse_reasoning and parsed.reasoning is None:
            answer = text.strip()
        else:
            answer = parsed.answer
        timings = {"preprocess_s": round(t_prep, 4), **{k: round(v, 4) for k, v in result.timings.items()},
                   "total_s": round(time.perf_counter() - t0, 4)}
        return Answer(
            text=text,
            answer=answer,
            reasoning=parsed.reasoning,
            evidence=[e.to_dict() for e in parsed.evidence],
            finish_reason=result.finish_reason,
            tokens={"prompt": result.prompt_tokens, "audio": result.audio_tokens, "completion": len(result.token_ids)},
            timings=timings,
            audio=[{"name": c.name, "duration_s": round(c.duration_s, 3)} for c in clips],
        )

    def ask(self, clips: list[Clip], prompt: str, *, system: str | None = None, **kw) -> Answer:
        content = [{"type": "audio"} for _ in clips] + [{"type": "text", "text": prompt}]
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
        return self.respond(messages, clips, **kw)
