"""Batched generation with a preallocated KV cache: greedy and sampling, stop tokens and strings, streaming.

One request batch runs as: encode each audio once -> splice -> chunked prefill into the KV cache ->
one token per step for every unfinished row. Design choices:

- Left padding with explicit positions (cumulative count of real tokens, as transformers' generate
  does) and a key-padding mask, so a row's tokens do not depend on what else is in the batch.
- The repetition penalty looks only at a row's real tokens. The reference also penalises its pad
  token (which doubles as an end-of-text token), so its batched output can differ from unbatched;
  ours does not.
- Sampling draws from one torch.Generator per row, seeded from the request's seed, so a row samples
  the same tokens whatever its batch.
- Prefill runs in chunks (`prefill_chunk` tokens) to bound attention-mask memory on 45K-token prompts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields

import torch

from afnext.model.afnext import AFNext
from afnext.model.llm import KVCache


@dataclass
class GenerationConfig:
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | list[int] | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    stop_strings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Normalise and check on construction, not only in from_model: a config built directly was
        # never validated (max_new_tokens=0 returned nothing, top_p=0 silently decoded greedily), and a
        # plain string as stop_strings was iterated as single characters ("px" stopped at any "p").
        if isinstance(self.stop_strings, str):
            self.stop_strings = [self.stop_strings]
        self.validate()

    @classmethod
    def from_model(cls, model: AFNext, **overrides) -> "GenerationConfig":
        """Defaults from the checkpoint's generation_config.json, then `overrides` (None values ignored)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unknown generation option(s): {', '.join(unknown)}")
        base = {k: v for k, v in (model.generation_defaults or {}).items() if k in names}
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    def eos_ids(self, model: AFNext) -> list[int]:
        ids = self.eos_token_id if self.eos_token_id is not None else model.config.llm.eos_token_id
        ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
        return ids


@dataclass
class GenerationResult:
    token_ids: list[int]
    text: str | None
    finish_reason: str  # "stop" (end token or stop string) or "length"
    prompt_tokens: int
    audio_tokens: int
    timings: dict[str, float]


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """seen (B, V) bool: tokens already in the row. Positive logits are divided, negative multiplied."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum <= (1 - top_p)
        drop_sorted[..., -1] = False  # always keep the most likely token
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


class _Cancelled(Exception):
    """Raised inside generation when a streaming consumer has gone away."""


def _pending_stop_prefix(text: str, stops: list[str]) -> int:
    """Length of the longest tail of `text` that could still grow into a stop string (held back)."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


class Engine:
    def __init__(self, model: AFNext, tokenizer=None, *, prefill_chunk: int = 4096):
        self.model = model
        self.tokenizer = tokenizer
        self.prefill_chunk = prefill_chunk

    # ---- public API ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_ids(self, input_ids, attention_mask=None, input_features=None, input_features_mask=None, **kw):
        """transformers-style: returns (B, prompt_len + new) ids, finished rows padded with pad_token_id."""
        cfg = GenerationConfig.from_model(self.model, **kw)
        new = [[] for _ in range(input_ids.shape[0])]
        for step in self._steps(input_ids, attention_mask, input_features, input_features_mask, cfg):
            for row, tok in step.items():
                new[row].append(tok)
        pad = cfg.pad_token_id if cfg.pad_token_id is not None else (cfg.eos_ids(self.model) or [0])[0]
        width = max(len(n) for n in new)
        out = torch.full((input_ids.shape[0], width), pad, dtype=torch.long)
        for row, toks in enumerate(new):
            out[row, : len(toks)] = torch.tensor(toks, dtype=torch.long)
        return torch.cat([input_ids.cpu(), out], dim=1)

    @torch.no_grad()
    def generate(self, inputs: dict, config: GenerationConfig | None = None, *,
                 on_delta: Callable[[int, str], None] | None = None,
                 on_audio_progress: Callable[[int, int], None] | None = None) -> list[GenerationResult]:
        """Run a batch; `on_delta(row, text)` receives decoded text as it is produced."""
        from afnext.tokenizer import IncrementalDecoder

        cfg = config or GenerationConfig.from_model(self.model)
        ids = inputs["input_ids"]
        b = ids.shape[0]
        decoders = [IncrementalDecoder(self.tokenizer) for _ in range(b)] if self.tokenizer else None
        tokens: list[list[int]] = [[] for _ in range(b)]
        texts = ["" for _ in range(b)]
        emitted = [0] * b  # characters of texts[row] already handed to on_delta
        finish = ["length"] * b
        timings: dict[str, float] = {}
        stops = [s for s in cfg.stop_strings if s]
        eos = set(cfg.eos_ids(self.model))
        done: set[int] = set()
        cut_by_string: set[int] = set()

        def emit(row: int, upto: int) -> None:
            if on_delta and upto > emitted[row]:
                on_delta(row, texts[row][emitted[row]:upto])
            emitted[row] = max(emitted[row], upto)

        steps = self._steps(ids, inputs.get("attention_mask"), inputs.get("input_features"),
                            inputs.get("input_features_mask"), cfg, timings=timings,
                            on_audio_progress=on_audio_progress)
        for step in steps:
            for row, tok in step.items():
                if row in done:
                    continue
                if tok in eos:
                    finish[row] = "stop"
                    done.add(row)
                    continue
                tokens[row].append(tok)
                if decoders is None:
                    continue
                texts[row] += decoders[row].push(tok)
                hits = [texts[row].find(s) for s in stops if s in texts[row]]
                if hits:
                    texts[row] = texts[row][: min(hits)]
                    finish[row] = "stop"
                    done.add(row)
                    cut_by_string.add(row)
                    emit(row, len(texts[row]))
                    continue
                emit(row, len(texts[row]) - _pending_stop_prefix(texts[row], stops))
            if len(done) == b:
                steps.close()
                break
        if decoders:
            for row in range(b):
                if row not in cut_by_string:
                    texts[row] += decoders[row].flush()
                emit(row, len(texts[row]))
        mask = inputs.get("attention_mask")
        prompt_tokens = [int(mask[r].sum()) if mask is not None else ids.shape[1] for r in range(b)]
        audio_id = self.model.config.audio_token_id
        return [
            GenerationResult(
                token_ids=tokens[r],
                text=texts[r] if decoders else None,
                finish_reason=finish[r],
                prompt_tokens=prompt_tokens[r],
                audio_tokens=int((ids[r] == audio_id).sum()),
                timings=dict(timings),
            )
            for r in range(b)
        ]

    def stream(self, inputs: dict, config: GenerationConfig | None = None, **kw) -> Iterator[str]:
        """Text deltas of a single-row request, as they are produced."""
        import queue
        import threading

        if inputs["input_ids"].shape[0] != 1:
            raise ValueError("stream() takes one request; use generate(on_delta=...) for batches")
        q: queue.Queue = queue.Queue()
        done = object()
        box: dict = {}
        cancelled = threading.Event()

        def on_delta(_row: int, delta: str) -> None:
            if cancelled.is_set():  # the consumer stopped reading: end generation at this token
                raise _Cancelled
            q.put(delta)

        def work():
            try:
                box["result"] = self.generate(inputs, config, on_delta=on_delta, **kw)[0]
            except _Cancelled:
                pass
            except BaseException as exc:  # surfaced in the consumer's thread
                box["error"] = exc
            finally:
                q.put(done)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            while (item := q.get()) is not done:
                yield item
        finally:
            cancelled.set()
        thread.join()
        if "error" in box:
            raise box["error"]
        self.last_result = box["result"]

    # ---- the loop --------------------------------------------------------------------------------
    def _steps(self, input_ids, attention_mask, input_features, input_features_mask, cfg: GenerationConfig,
               timings: dict | None = None, on_audio_progress=None) -> Iterator[dict[int, int]]:
        """Yield {row: next_token} for every unfinished row, step by step (rows finish on an end token)."""
        model = self.model
        timings = {} if timings is None else timings
        dev = model.device
        ids = input_ids.to(dev)
        b, t = ids.shape
        mask = (attention_mask if attention_mask is not None else torch.ones_like(ids)).to(dev).long()
        t0 = time.perf_counter()
        audio = None
        if input_features is not None:
            fmask = input_features_mask if input_features_mask is not None else torch.ones(
                input_features.shape[0], input_features.shape[-1], dtype=torch.long)
            audio = model.encode_audio(input_features, fmask, ids, progress=on_audio_progress)
        timings["audio_encode_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        embeds = model.embed_inputs(ids, audio)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        cache = KVCache(model.config.llm, b, t + cfg.max_new_tokens, model.dtype, dev)
        key_padding = mask.bool()
        logits = None
        for lo in range(0, t, self.prefill_chunk):
            hi = min(t, lo + self.prefill_chunk)
            kp = None if bool(key_padding.all()) else key_padding[:, :hi]
            hidden = model.llm(embeds[:, lo:hi], positions[:, lo:hi], kp, cache)
            logits = model.lm_head(hidden[:, -1]).float()
        timings["prefill_s"] = time.perf_counter() - t0

        eos = torch.tensor(cfg.eos_ids(model), dtype=torch.long, device=dev)
        seen = torch.zeros(b, model.config.llm.vocab_size, dtype=torch.bool, device=dev)
        if cfg.repetition_penalty != 1.0:
            # Index only the real tokens. (Was scatter_ with padding mapped to id 0 writing False: with
            # duplicate indices which write wins is undefined (nondeterministic on CUDA), so a padded
            # row whose prompt holds id 0 could lose that token's penalty.)
            rows, cols = mask.nonzero(as_tuple=True)
            seen[rows, ids[rows, cols]] = True
        generators = None
        if cfg.do_sample:
            seeds = cfg.seed if isinstance(cfg.seed, list) else [cfg.seed] * b
            if len(seeds) != b:
                raise ValueError(f"seed is a list of {len(seeds)} values for a batch of {b} requests; give one per row")
            generators = []
            for s in seeds:
                g = torch.Generator(device=dev)
                g.manual_seed(int(s) if s is not None else int(torch.randint(0, 2**62, (1,))))
                generators.append(g)
        alive = torch.ones(b, dtype=torch.bool, device=dev)
        next_pos = positions[:, -1] + 1
        t0 = time.perf_counter()
        for step in range(cfg.max_new_tokens):
            scores = apply_repetition_penalty(logits, seen, cfg.repetition_penalty)
            if cfg.do_sample:
                scores = filter_top_k_top_p(scores / cfg.temperature, cfg.top_k, cfg.top_p)
                probs = scores.softmax(-1)
                nxt = torch.stack([torch.multinomial(probs[r], 1, generator=generators[r])[0] for r in range(b)])
            else:
                nxt = scores.argmax(-1)
            yield {r: int(nxt[r]) for r in range(b) if alive[r]}
            seen[torch.arange(b, device=dev), nxt] = True
            if eos.numel():
                alive &= ~torch.isin(nxt, eos)
            if not bool(alive.any()) or step == cfg.max_new_tokens - 1:
                break
            key_padding = torch.cat([key_padding, torch.ones(b, 1, dtype=torch.bool, device=dev)], dim=1)
            kp = None if bool(key_padding.all()) else key_padding
            hidden = model.llm(model.llm.embed_tokens(nxt[:, None]), next_pos[:, None], kp, cache)
            logits = model.lm_head(hidden[:, -1]).float()
            next_pos = next_pos + 1
        timings["decode_s"] = time.perf_counter() - t0
